"""Tiny zoos of plain ONNX classifiers for tests that need real onnxruntime sessions but not the
shipped models: `make_zoo` writes the files and a manifest as `zoo build` would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save_model

from agent.zoo.manifest import AccuracyPoint, LatencyPoint, LatencyProfile, Manifest
from agent.zoo.sessions import describe_onnx

CLASSES = ["ok", "scratch", "crack"]
SIZE = 32
WHITE = np.ones((3, SIZE, SIZE), np.float32)
NOISE = np.random.default_rng(0).random((3, SIZE, SIZE), dtype=np.float32) * 0.9


def write_classifier(path: Path, seed: int, fails_on_white: bool = False) -> None:
    """A plain ONNX classifier (no `token_keep`): mean colour -> linear head. With
    `fails_on_white`, an all-white image (darkest pixel 1.0) makes Where hand Reshape a shape
    its data cannot fill, so onnxruntime itself raises at run time for that input only."""
    weights = np.random.default_rng(seed).normal(size=(3, len(CLASSES))).astype(np.float32)
    inits = [numpy_helper.from_array(weights, "w")]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["scores" if fails_on_white else "logits"]),
    ]
    if fails_on_white:
        inits += [
            numpy_helper.from_array(np.array(1.0, np.float32), "white"),
            numpy_helper.from_array(np.array([7, 11], np.int64), "impossible"),
            numpy_helper.from_array(np.array([-1, len(CLASSES)], np.int64), "same"),
        ]
        nodes += [
            helper.make_node("ReduceMin", ["image"], ["darkest"], keepdims=0),
            helper.make_node("GreaterOrEqual", ["darkest", "white"], ["is_white"]),
            helper.make_node("Where", ["is_white", "impossible", "same"], ["shape"]),
            helper.make_node("Reshape", ["scores", "shape"], ["logits"]),
        ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", len(CLASSES)])],
        inits,
    )
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def make_zoo(directory: Path, variants: dict[str, tuple[float, bool]], profiled: bool = True) -> Path:
    """A zoo of plain classifiers, name -> (test accuracy, fails on white), with a manifest
    (hashes, accuracy, a 1-2 ms latency profile unless not `profiled`) as `zoo build` writes one."""
    directory.mkdir(parents=True, exist_ok=True)
    profile = LatencyProfile(
        machine="test",
        measured_at="2025-01-01T00:00:00Z",
        points=[LatencyPoint(budget=1.0, threads=t, p50_ms=1.0, p95_ms=2.0) for t in (1, 2)],
    )
    specs = []
    for seed, (name, (accuracy, faulty)) in enumerate(variants.items()):
        write_classifier(directory / f"{name}.onnx", seed, faulty)
        spec = describe_onnx(directory / f"{name}.onnx", name, directory)
        accuracy_points = [AccuracyPoint(budget=1.0, test=accuracy)]
        specs.append(spec.model_copy(update={"accuracy": accuracy_points, "latency": profile if profiled else None}))
    manifest = Manifest(name="faults", classes=CLASSES, variants=specs)
    (directory / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return directory
