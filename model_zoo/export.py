"""ONNX export and onnxruntime static int8 quantization of the token-budget ViT."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from model_zoo.model import TokenBudgetViT

OPSET = 17


def export_onnx(model: TokenBudgetViT, path: Path, metadata: dict[str, str]) -> None:
    """Export with `token_keep` as an int64 input of shape [1] (legacy exporter: 0-d k is
    rejected by onnxruntime's TopK, and the dynamo exporter bakes k in)."""
    model.eval()
    size = model.spec.image_size
    example = (torch.rand(1, 3, size, size), torch.tensor([model.spec.tokens], dtype=torch.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=["image", "token_keep"],
            output_names=["logits", "attention"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "attention": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "edge-agent token-budget ViT; token_keep = patch tokens kept (clamped to [1, N])"
    onnx.save(proto, str(path))


class _Calibration(CalibrationDataReader):
    def __init__(self, inputs: NDArray[np.float32], tokens: int, budgets: tuple[float, ...]) -> None:
        self._feeds: Iterator[dict[str, NDArray[np.generic]]] = iter(
            {
                "image": inputs[i : i + 1],
                "token_keep": np.array([max(1, round(budgets[i % len(budgets)] * tokens))], dtype=np.int64),
            }
            for i in range(len(inputs))
        )

    def get_next(self) -> dict[str, NDArray[np.generic]] | None:
        return next(self._feeds, None)


#: Formats tried; the fastest within the accuracy bound is kept. Only weight x activation
#: MatMul/Gemm are quantized: quantizing the attention's activation x activation matmuls and the
#: ranking block costs more in (de)quantization than it saves at this size (measured 1.08x fp32).
CANDIDATES: dict[str, tuple[str, QuantFormat, QuantType, QuantType]] = {
    "static-qoperator-u8s8": ("static", QuantFormat.QOperator, QuantType.QUInt8, QuantType.QInt8),
    "static-qdq-u8s8": ("static", QuantFormat.QDQ, QuantType.QUInt8, QuantType.QInt8),
    "dynamic-s8": ("dynamic", QuantFormat.QOperator, QuantType.QUInt8, QuantType.QInt8),
}


def activation_matmuls(model_path: Path) -> list[str]:
    """MatMul nodes whose inputs are both activations (q @ k^T, attn @ v)."""
    proto = onnx.load(str(model_path))
    weights = {t.name for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)]


def ranking_nodes(model_path: Path, prune_blocks: tuple[int, ...]) -> list[str]:
    """Nodes of the ranking blocks' attention: kept fp32 so int8 keeps the same tokens."""
    proto = onnx.load(str(model_path))
    prefixes = tuple(f"/blocks.{b}/attn/" for b in prune_blocks)
    return [n.name for n in proto.graph.node if n.name.startswith(prefixes)]


def quantize(
    fp32: Path,
    out: Path,
    candidate: str,
    calibration: NDArray[np.float32],
    tokens: int,
    budgets: tuple[float, ...],
    prune_blocks: tuple[int, ...],
) -> None:
    """int8 weight MatMul/Gemm; static candidates are MinMax-calibrated on training images."""
    kind, fmt, activation, weight = CANDIDATES[candidate]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        exclude = ranking_nodes(pre, prune_blocks) + activation_matmuls(pre)
        if kind == "dynamic":
            quantize_dynamic(
                str(pre),
                str(out),
                weight_type=weight,
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_exclude=exclude,
            )
            return
        quantize_static(
            str(pre),
            str(out),
            _Calibration(calibration, tokens, budgets),
            quant_format=fmt,
            activation_type=activation,
            weight_type=weight,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
            per_channel=False,
        )
