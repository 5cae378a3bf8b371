"""Find, verify and open the zoo's variants, and run them with a token budget."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog
from numpy.typing import NDArray

from agent.errors import InferenceFailed, ZooError
from agent.zoo.manifest import (
    MANIFEST_NAME,
    BytesCheck,
    Manifest,
    Preprocess,
    TensorSpec,
    Variant,
    keep_count,
    load_manifest,
)

log = structlog.get_logger(__name__)

# A gateway daemon phones nowhere: onnxruntime's usage telemetry stays off.
if hasattr(ort, "disable_telemetry_events"):
    ort.disable_telemetry_events()


@dataclass(frozen=True)
class SessionSettings:
    """onnxruntime threading. Spinning is off: with several sessions loaded, idle spinning
    threads of one session steal the cores another session needs (measured 4.5x slower)."""

    intra_threads: int = 2
    inter_threads: int = 1
    spinning: bool = False

    def options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_threads
        opts.inter_op_num_threads = self.inter_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.log_severity_level = 3
        return opts


@dataclass(frozen=True)
class Prediction:
    probs: NDArray[np.float32]  # (B, classes)
    attention: NDArray[np.float32] | None  # (B, grid, grid) CLS attention, if the model has it
    budget: float  # the budget actually applied (1.0 for a plain model)
    kept_tokens: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_file(zoo_dir: Path, relative: str) -> Path:
    """The variant file's path, refusing any path that leaves the zoo folder (also via links)."""
    root = zoo_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ZooError(f"path {relative!r} leaves the zoo folder {root}")
    return path


def softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def to_model_input(x: NDArray[np.float32], pre: Preprocess) -> NDArray[np.float32]:
    """The canonical (B, 3, S, S) RGB input in [0, 1] as the model wants it (`Preprocess`)."""
    if pre.is_identity:
        return x
    y = x * np.float32(255.0 * pre.scale)
    if pre.channel_order == "bgr":
        y = y[:, ::-1]
    if pre.mean is not None:
        y = y - np.asarray(pre.mean, np.float32)[None, :, None, None]
    if pre.std is not None:
        y = y / np.asarray(pre.std, np.float32)[None, :, None, None]
    if pre.layout == "nhwc":
        y = y.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(y, dtype=np.float32)


@dataclass
class LoadedVariant:
    """One verified variant with its onnxruntime session."""

    spec: Variant
    path: Path
    session: ort.InferenceSession
    image_input: str
    output_names: list[str]  # the scores, then the attention map if the model has one

    @property
    def name(self) -> str:
        return self.spec.name

    def run(self, image: NDArray[np.float32], budget: float = 1.0) -> Prediction:
        """Run a canonical (B, 3, S, S) batch (RGB in [0, 1]) at `budget`; a plain model ignores
        the budget. The variant's preprocessing and output kind are applied here, so every
        caller (serving, evaluation, profiling) feeds the model the same way."""
        feeds: dict[str, NDArray[np.generic]] = {self.image_input: to_model_input(image, self.spec.preprocess)}
        kept = self.spec.tokens
        applied = 1.0
        if self.spec.token_input:
            kept = keep_count(budget, self.spec.tokens)
            applied = budget
            feeds[self.spec.token_input] = np.array([kept], dtype=np.int64)
        try:
            outputs = self.session.run(self.output_names, feeds)
        except Exception as exc:  # onnxruntime's errors (Fail, RuntimeException, ...) share no narrower base
            raise InferenceFailed(f"variant {self.name}: onnxruntime failed: {exc}") from exc
        attention = outputs[1].astype(np.float32) if len(outputs) > 1 else None
        scores = outputs[0].reshape(outputs[0].shape[0], -1).astype(np.float32)
        probs = scores if self.spec.output == "probabilities" else softmax(scores)
        return Prediction(probs, attention, applied, kept)


def check_file(zoo_dir: Path, spec: Variant, verify: bool = True) -> Path:
    """The variant's file if it is there and (with `verify`) matches the manifest's hash;
    ZooError naming the variant otherwise."""
    path = resolve_file(zoo_dir, spec.file)
    if not path.is_file():
        raise ZooError(f"variant {spec.name}: file {spec.file} is missing")
    if verify:
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise ZooError(f"variant {spec.name}: cannot read {spec.file}: {exc.strerror or exc}") from exc
        if actual != spec.sha256:
            raise ZooError(
                f"variant {spec.name}: SHA-256 mismatch for {spec.file} "
                f"(manifest {spec.sha256[:12]}..., file {actual[:12]}...)"
            )
    return path


def open_variant(zoo_dir: Path, spec: Variant, settings: SessionSettings, verify: bool = True) -> LoadedVariant:
    """Verify the file against its hash, then open a session; errors name the variant."""
    path = check_file(zoo_dir, spec, verify)
    try:
        session = ort.InferenceSession(str(path), settings.options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        raise ZooError(f"variant {spec.name}: onnxruntime cannot load {spec.file}: {exc}") from exc
    inputs = [i.name for i in session.get_inputs()]
    image_inputs = [n for n in inputs if n != spec.token_input]
    if len(image_inputs) != 1:
        raise ZooError(f"variant {spec.name}: expected one image input, found {image_inputs}")
    if spec.token_input and spec.token_input not in inputs:
        raise ZooError(f"variant {spec.name}: the manifest names input {spec.token_input!r}, the model has {inputs}")
    outputs = [o.name for o in session.get_outputs()]
    attention = spec.attention_name
    if attention is not None and attention not in outputs:
        raise ZooError(f"variant {spec.name}: the manifest names output {attention!r}, the model has {outputs}")
    return LoadedVariant(spec, path, session, image_inputs[0], [outputs[0], *([attention] if attention else [])])


def describe_onnx(path: Path, name: str, zoo_dir: Path) -> Variant:
    """A manifest entry for a user's own ONNX classifier (with or without `token_keep`)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    token_input = "token_keep" if any(i.name == "token_keep" for i in inputs) else None
    image = next(i for i in inputs if i.name != token_input)
    shape = image.shape
    if len(shape) != 4 or not isinstance(shape[2], int) or shape[1] != 3:
        raise ZooError(f"{path}: expected an image input of shape (N, 3, S, S), got {shape}")
    outputs = session.get_outputs()
    tokens = 0
    if token_input and len(outputs) > 1 and isinstance(outputs[1].shape[1], int):
        tokens = int(outputs[1].shape[1]) * int(outputs[1].shape[2])
    return Variant(
        name=name,
        file=os.path.relpath(path.resolve(), zoo_dir.resolve()),
        sha256=sha256_file(path),
        resolution=int(shape[2]),
        tokens=tokens,
        token_input=token_input if tokens else None,
        inputs=[TensorSpec(name=i.name, dtype=i.type, shape=list(i.shape)) for i in inputs],
        outputs=[TensorSpec(name=o.name, dtype=o.type, shape=list(o.shape)) for o in outputs],
        parameters=0,
        size_bytes=path.stat().st_size,
    )


@dataclass
class Zoo:
    """The variants that loaded, and why the others did not."""

    directory: Path
    manifest: Manifest
    variants: dict[str, LoadedVariant] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes


def open_zoo(
    zoo_dir: Path,
    settings: SessionSettings | None = None,
    names: list[str] | None = None,
    check: BytesCheck | None = None,
) -> Zoo:
    """Open every (or the named) variant; a variant that fails is recorded, not fatal. `check`
    (the daemon's signature check) sees the manifest's bytes before they are parsed; it raises
    to refuse the whole zoo."""
    manifest = load_manifest(zoo_dir / MANIFEST_NAME, check)
    zoo = Zoo(zoo_dir, manifest)
    for spec in manifest.variants:
        if names is not None and spec.name not in names:
            continue
        try:
            zoo.variants[spec.name] = open_variant(zoo_dir, spec, settings or SessionSettings())
            log.info("variant_loaded", variant=spec.name, file=spec.file)
        except ZooError as exc:
            zoo.failures[spec.name] = exc.message
            log.error("variant_failed", variant=spec.name, error=exc.message)
    return zoo


def recheck_files(zoo: Zoo) -> dict[str, str | None]:
    """Hash every loaded variant's file again (a reload does): name -> None while it still
    matches the manifest the session was loaded from, else why not. The session in memory is
    unchanged either way; the caller decides whether to serve from it."""
    results: dict[str, str | None] = {}
    for name, variant in zoo.variants.items():
        try:
            check_file(zoo.directory, variant.spec)
            results[name] = None
        except ZooError as exc:
            results[name] = exc.message
    return results


def verify_zoo(zoo_dir: Path) -> dict[str, str | None]:
    """Hash and load-check every variant: name -> None if good, else the reason."""
    manifest = load_manifest(zoo_dir / MANIFEST_NAME)
    results: dict[str, str | None] = {}
    for spec in manifest.variants:
        try:
            open_variant(zoo_dir, spec, SessionSettings(intra_threads=1))
            results[spec.name] = None
        except ZooError as exc:
            results[spec.name] = exc.message
    return results
