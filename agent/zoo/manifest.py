"""The zoo manifest: the pydantic schema of model_zoo/manifest.json."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ZooError, validation_message
from agent.values import BUDGETS

MANIFEST_NAME = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: str
    shape: list[int | str]


ResizeMethod = Literal["bilinear", "bicubic", "lanczos", "box", "nearest"]


class Preprocess(_Strict):
    """What the model expects, from the daemon's canonical input (RGB, size x size, NCHW,
    values in [0, 1]): `scale` multiplies the 0-255 pixel values, then `mean` is subtracted and
    the result divided by `std` (per channel, in the model's channel order), then the layout.
    The defaults are the shipped zoo's (it normalises inside the graph): [0, 1] RGB, NCHW.
    ImageNet-trained models usually want mean 0.485,0.456,0.406 and std 0.229,0.224,0.225."""

    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    scale: float = Field(default=1 / 255, gt=0, le=1)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    resize: ResizeMethod = "bilinear"

    @field_validator("std")
    @classmethod
    def _positive(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and min(value) <= 0:
            raise ValueError("every std must be > 0")
        return value

    @property
    def is_identity(self) -> bool:
        return (
            self.channel_order == "rgb"
            and self.layout == "nchw"
            and abs(self.scale - 1 / 255) < 1e-12
            and self.mean is None
            and self.std is None
        )


class AccuracyPoint(_Strict):
    budget: float = Field(gt=0, le=1)
    test: float = Field(ge=0, le=1)
    shifted: float | None = Field(default=None, ge=0, le=1)
    #: Test images scored, and the 95% Wilson interval of `test`.
    test_n: int | None = Field(default=None, ge=1)
    test_ci: tuple[float, float] | None = None
    #: Exact McNemar p-value (paired, same test images) against the next larger budget of this
    #: variant, and against full@1: below 0.05, the difference is unlikely to be noise.
    p_vs_larger_budget: float | None = Field(default=None, ge=0, le=1)
    p_vs_full: float | None = Field(default=None, ge=0, le=1)
    #: Each test image's outcome (1: labelled right), bit-packed, base64 (`stats.pack_hits`):
    #: with it any two configurations can be compared paired, not only the neighbours above.
    test_hits: str | None = Field(default=None, max_length=1_000_000)


class LatencyPoint(_Strict):
    budget: float = Field(gt=0, le=1)
    threads: int = Field(ge=1)
    p50_ms: float = Field(gt=0)
    p95_ms: float = Field(gt=0)


class LatencyProfile(_Strict):
    machine: str
    measured_at: str
    points: list[LatencyPoint]

    def lookup(self, budget: float, threads: int) -> LatencyPoint | None:
        for point in self.points:
            if point.threads == threads and abs(point.budget - budget) < 1e-9:
                return point
        return None


class Variant(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    description: str = ""
    resolution: int = Field(ge=8, le=4096)
    #: Patch tokens the budget applies to; 0 for a plain model without `token_keep`.
    tokens: int = Field(ge=0)
    token_input: str | None = "token_keep"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: int = Field(ge=0)
    size_bytes: int = Field(ge=0)
    accuracy: list[AccuracyPoint] = []
    latency: LatencyProfile | None = None
    preprocess: Preprocess = Field(default_factory=Preprocess)
    #: What the first output holds: logits (softmax is applied) or probabilities (used as they are).
    output: Literal["logits", "probabilities"] = "logits"
    #: The output holding a (B, grid, grid) attention map for `explain`; None: the second output
    #: of a model with a token budget input (the shipped zoo's), else none.
    attention_output: str | None = None

    @field_validator("file")
    @classmethod
    def _relative(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError(f"file must be a path inside the zoo folder, got {value!r}")
        return value

    @model_validator(mode="after")
    def _attention_is_an_output(self) -> Variant:
        names = [o.name for o in self.outputs]
        if self.attention_output is not None and self.attention_output not in names:
            raise ValueError(f"attention_output {self.attention_output!r} is not an output of the model ({names})")
        return self

    @property
    def attention_name(self) -> str | None:
        if self.attention_output is not None:
            return self.attention_output
        return self.outputs[1].name if self.token_input and len(self.outputs) > 1 else None

    @property
    def budgets(self) -> tuple[float, ...]:
        """The budgets this variant can run at: every budget, or only 1.0 for a plain model."""
        return BUDGETS if self.token_input else (1.0,)

    def accuracy_point(self, budget: float) -> AccuracyPoint | None:
        return next((p for p in self.accuracy if abs(p.budget - budget) < 1e-9), None)

    def accuracy_at(self, budget: float, split: str = "test") -> float | None:
        point = self.accuracy_point(budget)
        if point is None:
            return None
        return point.test if split == "test" else point.shifted


class BuildInfo(_Strict):
    seed: int
    data: str
    config: dict[str, object]
    versions: dict[str, str]
    duration_s: float
    built_at: str


class Manifest(_Strict):
    schema_version: int = 1
    name: str
    classes: list[str] = Field(min_length=2)
    budgets: list[float] = list(BUDGETS)
    variants: list[Variant] = Field(min_length=1)
    build: BuildInfo | None = None

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


def keep_count(budget: float, tokens: int) -> int:
    """Patch tokens kept at `budget` (a share of `tokens`), at least one."""
    return max(1, min(tokens, round(budget * tokens)))


#: Called on a file's bytes before they are parsed (the daemon's signature check); raises to refuse.
BytesCheck = Callable[[Path, bytes], None]


def load_manifest(path: Path, check: BytesCheck | None = None) -> Manifest:
    """Read and validate a manifest; errors name the file and the field. With `check` (the
    signature check), the bytes read are checked before they are parsed: read once, so what is
    verified is what is used."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ZooError(f"{path}: cannot read manifest: {exc.strerror or exc}") from exc
    if check is not None:
        check(path, data)
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise ZooError(f"{path}: invalid manifest at {validation_message(exc, '(root)')}") from exc


class ProfiledVariant(_Strict):
    sha256: str
    latency: LatencyProfile


class DeviceProfile(_Strict):
    """This device's latency table (`edge-agent zoo profile`); preferred over the shipped one."""

    machine: str
    measured_at: str
    variants: dict[str, ProfiledVariant]


def latency_table(manifest: Manifest, device: DeviceProfile | None) -> dict[str, LatencyProfile]:
    """Per variant: this device's profile where it was measured on the same file, else the shipped one."""
    table: dict[str, LatencyProfile] = {}
    for variant in manifest.variants:
        measured = device.variants.get(variant.name) if device else None
        if measured and measured.sha256 == variant.sha256:
            table[variant.name] = measured.latency
        elif variant.latency:
            table[variant.name] = variant.latency
    return table


def load_device_profile(path: Path) -> DeviceProfile | None:
    """The device profile if present and valid; a broken file is reported, not fatal."""
    if not path.is_file():
        return None
    try:
        return DeviceProfile.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise ZooError(f"{path}: invalid device profile: {exc}") from exc
