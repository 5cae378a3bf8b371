"""`edge-agent zoo import`: an operator's own ONNX classifiers as a zoo the daemon serves.

Everything the manifest needs is read from the files (inputs, outputs, resolution, layout,
hashes, sizes, parameter counts) or given by the operator (class names, preprocessing); what
the output holds is found by running the model when not given. Variants that can be made
without training are made here: int8, by onnxruntime's quantizer, dynamic and (with
calibration images) static, keeping the fastest within the accuracy bound as `zoo build` does.
Pruning and a lower resolution need training; they are the operator's to bring as variants.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from agent.errors import ZooError
from agent.zoo.manifest import MANIFEST_NAME, Manifest, Preprocess, TensorSpec, Variant
from agent.zoo.sessions import SessionSettings, open_variant, sha256_file, to_model_input

OutputKind = Literal["auto", "logits", "probabilities"]
#: Most accuracy (share of the calibration images) an int8 variant may lose against its fp32 model.
MAX_INT8_LOSS = 0.01
Log = Callable[[str], None]


@dataclass(frozen=True)
class Calibration:
    """Images (canonical inputs at each resolution) and, for an ImageFolder, their labels."""

    inputs: Callable[[int, str], NDArray[np.float32]]  # (resolution, resize) -> (N, 3, S, S)
    labels: NDArray[np.int64] | None


def parameter_count(path: Path) -> int:
    """Elements in the model's initializers (0 without the `onnx` package)."""
    try:
        import onnx
    except ImportError:
        return 0
    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))


def describe(path: Path, name: str, zoo_dir: Path, size: int | None, preprocess: Preprocess) -> Variant:
    """A manifest entry for one ONNX classifier: one image input, NCHW (N, 3, S, S) or NHWC
    (N, S, S, 3); an int64 `token_keep` input, if present, is a token budget."""
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        raise ZooError(f"{path}: onnxruntime cannot load it: {exc}") from exc
    inputs = session.get_inputs()
    token_input = next((i.name for i in inputs if i.name == "token_keep" and "int64" in i.type), None)
    images = [i for i in inputs if i.name != token_input]
    if len(images) != 1:
        raise ZooError(f"{path}: expected one image input, found {[i.name for i in images]}")
    shape = list(images[0].shape)
    if len(shape) != 4:
        raise ZooError(f"{path}: expected a 4-d image input (N, 3, S, S) or (N, S, S, 3), got {shape}")
    layout: Literal["nchw", "nhwc"] = "nhwc" if shape[3] == 3 and shape[1] != 3 else "nchw"
    spatial = shape[1:3] if layout == "nhwc" else shape[2:4]
    fixed = [d for d in spatial if isinstance(d, int)]
    resolution = size or (fixed[0] if fixed else None)
    if resolution is None:
        raise ZooError(f"{path}: the input size is not fixed in the graph ({shape}); give it with --size")
    if fixed and size and fixed[0] != size:
        raise ZooError(f"{path}: the graph's input is {fixed[0]} px, --size says {size}")
    outputs = session.get_outputs()
    tokens = 0
    if token_input and len(outputs) > 1 and all(isinstance(d, int) for d in outputs[1].shape[1:3]):
        tokens = int(outputs[1].shape[1]) * int(outputs[1].shape[2])
    return Variant(
        name=name,
        file=path.resolve().relative_to(zoo_dir.resolve()).as_posix(),
        sha256=sha256_file(path),
        resolution=int(resolution),
        tokens=tokens,
        token_input=token_input if tokens else None,
        inputs=[TensorSpec(name=i.name, dtype=i.type, shape=list(i.shape)) for i in inputs],
        outputs=[TensorSpec(name=o.name, dtype=o.type, shape=list(o.shape)) for o in outputs],
        parameters=parameter_count(path),
        size_bytes=path.stat().st_size,
        preprocess=preprocess.model_copy(update={"layout": layout}),
    )


def detect_output(path: Path, variant: Variant) -> Literal["logits", "probabilities"]:
    """Probabilities if, on a few random images, every score is in [0, 1] and each row sums to 1."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = to_model_input(rng.random((4, 3, variant.resolution, variant.resolution), dtype=np.float32), variant.preprocess)
    feeds: dict[str, NDArray[np.generic]] = {_image_input(variant): x}
    if variant.token_input:
        feeds[variant.token_input] = np.array([variant.tokens], dtype=np.int64)
    try:
        scores = np.asarray(session.run([variant.outputs[0].name], feeds)[0], dtype=np.float64)
    except Exception:  # a batch of 4 refused by a graph fixed at batch 1: try one image
        feeds = {k: (v[:1] if k != variant.token_input else v) for k, v in feeds.items()}
        scores = np.asarray(session.run([variant.outputs[0].name], feeds)[0], dtype=np.float64)
    scores = scores.reshape(scores.shape[0], -1)
    sums = scores.sum(axis=1)
    return "probabilities" if scores.min() >= 0 and scores.max() <= 1 and np.allclose(sums, 1, atol=1e-3) else "logits"


def _image_input(variant: Variant) -> str:
    return next(i.name for i in variant.inputs if i.name != variant.token_input)


def _fastest_int8(out: Path, base: Variant, calibration: Calibration | None, log: Log) -> tuple[Path, str] | None:
    """Quantize `base` every way that applies; the fastest within MAX_INT8_LOSS of fp32 (on the
    labelled calibration images; without labels, the fastest that runs)."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
    except ImportError as exc:
        raise ZooError(f"--int8 needs the onnx package ({exc}): pip install 'edge-agent[import]'") from None
    source = out / base.file
    calib_x = calibration.inputs(base.resolution, base.preprocess.resize) if calibration is not None else None
    candidates: list[tuple[str, Path]] = []
    dynamic = out / "int8.dynamic.onnx"
    try:
        quantize_dynamic(str(source), str(dynamic), weight_type=QuantType.QInt8)
        candidates.append(("dynamic", dynamic))
    except Exception as exc:  # the quantizer fails on some graphs; say so and go on
        log(f"int8 dynamic quantization failed: {exc}")
    if calib_x is not None:
        inputs = calib_x
        feeds_name = _image_input(base)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(range(min(len(inputs), 200)))

            def get_next(self) -> dict[str, NDArray[np.generic]] | None:
                i = next(self.items, None)
                if i is None:
                    return None
                feed: dict[str, NDArray[np.generic]] = {feeds_name: to_model_input(inputs[i : i + 1], base.preprocess)}
                if base.token_input:
                    feed[base.token_input] = np.array([base.tokens], dtype=np.int64)
                return feed

        static = out / "int8.static.onnx"
        try:
            quantize_static(str(source), str(static), Reader(), quant_format=QuantFormat.QDQ)
            candidates.append(("static", static))
        except Exception as exc:
            log(f"int8 static quantization failed: {exc}")
    if not candidates:
        return None
    settings = SessionSettings(intra_threads=1)
    fp32 = open_variant(out, base, settings)
    probe = np.random.default_rng(0).random((1, 3, base.resolution, base.resolution), dtype=np.float32)
    trials = []
    for how, path in candidates:
        spec = base.model_copy(update={"name": "int8", "file": path.name, "sha256": sha256_file(path)})
        loaded = open_variant(out, spec, settings)
        fp32_ms, q_ms = _median_ms(fp32.run, probe), _median_ms(loaded.run, probe)
        loss = 0.0
        if calib_x is not None and calibration is not None and calibration.labels is not None:
            labels = calibration.labels
            loss = _accuracy(fp32.run, calib_x, labels) - _accuracy(loaded.run, calib_x, labels)
        log(f"int8 {how}: {q_ms / fp32_ms:.2f}x fp32 latency, accuracy {-100 * loss:+.1f} pt on calibration images")
        trials.append((how, path, q_ms, loss))
    within = [t for t in trials if t[3] <= MAX_INT8_LOSS]
    if not within:
        log("no int8 variant within 1 pt of fp32: none added")
        for _, path, _, _ in trials:
            path.unlink(missing_ok=True)
        return None
    how, path, _, _ = min(within, key=lambda t: t[2])
    for _, other, _, _ in trials:
        if other != path:
            other.unlink(missing_ok=True)
    final = out / "int8.onnx"
    path.replace(final)
    return final, how


def _median_ms(run: Callable[[NDArray[np.float32], float], object], x: NDArray[np.float32]) -> float:
    for _ in range(3):
        run(x, 1.0)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        run(x, 1.0)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def _accuracy(
    run: Callable[[NDArray[np.float32], float], object], x: NDArray[np.float32], y: NDArray[np.int64]
) -> float:
    hits = 0
    for i in range(len(x)):
        pred = run(x[i : i + 1], 1.0)
        hits += int(int(pred.probs[0].argmax()) == int(y[i]))  # type: ignore[attr-defined]
    return hits / len(x)


def import_models(
    out: Path,
    models: dict[str, Path],
    classes: list[str],
    preprocess: Preprocess,
    output: OutputKind = "auto",
    size: int | None = None,
    int8: bool = False,
    calibration: Calibration | None = None,
    name: str = "imported-classifier",
    log: Log = print,
) -> Manifest:
    """Copy the models into `out` and write its manifest; returns it."""
    if "full" not in models:
        raise ZooError("one model must be the variant `full` (the most accurate one)")
    if len(classes) < 2:
        raise ZooError("give at least two class names (--classes a,b,c or --classes @FILE)")
    out.mkdir(parents=True, exist_ok=True)
    variants = []
    for variant_name, source in models.items():
        if not source.is_file():
            raise ZooError(f"{source}: no such file")
        target = out / f"{variant_name}.onnx"
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        entry = describe(target, variant_name, out, size, preprocess)
        kind = detect_output(target, entry) if output == "auto" else output
        _check_classes(target, entry, len(classes))
        log(f"{variant_name}: {entry.resolution} px {entry.preprocess.layout}, {kind}, {entry.parameters:,} parameters")
        variants.append(entry.model_copy(update={"output": kind, "description": f"imported from {source.name}"}))
    if int8 and "int8" not in models:
        made = _fastest_int8(out, _by_name(variants, "full"), calibration, log)
        if made is not None:
            path, how = made
            full = _by_name(variants, "full")
            entry = describe(path, "int8", out, size, full.preprocess)
            variants.append(
                entry.model_copy(
                    update={
                        "output": full.output,
                        "preprocess": full.preprocess,
                        "description": f"int8 ({how} quantization) of full",
                    }
                )
            )
    manifest = Manifest(name=name, classes=classes, variants=variants)
    (out / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest


def _by_name(variants: list[Variant], name: str) -> Variant:
    return next(v for v in variants if v.name == name)


def _check_classes(path: Path, variant: Variant, count: int) -> None:
    """The first output's class dimension, where the graph fixes it, must match the class list."""
    shape = variant.outputs[0].shape
    dims = [d for d in shape[1:] if isinstance(d, int)]
    if dims and int(np.prod(dims)) != count:
        raise ZooError(f"{path}: the model scores {int(np.prod(dims))} classes, {count} class names were given")
