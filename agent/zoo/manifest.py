"""The zoo manifest: the pydantic schema of model_zoo/manifest.json."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import ZooError, validation_message
from agent.values import BUDGETS

MANIFEST_NAME = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: str
    shape: list[int | str]


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

    @field_validator("file")
    @classmethod
    def _relative(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError(f"file must be a path inside the zoo folder, got {value!r}")
        return value

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


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest; errors name the file and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ZooError(f"{path}: cannot read manifest: {exc.strerror or exc}") from exc
    try:
        return Manifest.model_validate_json(text)
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
