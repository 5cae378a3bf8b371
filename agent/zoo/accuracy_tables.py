"""The accuracy tables the controller may rank configurations by.

`test` and `shifted` come with the zoo (the manifest's figures on the build's splits); `site`
is measured on the gateway, on the operator's own labelled images (`edge-agent zoo eval
--data DIR --save`), and kept in the state directory beside the device profile. Each figure
carries its 95% interval, and the manifest's test figures their paired tests (exact McNemar, the
same test images scored by both configurations): against every other configuration where the
manifest keeps each image's outcome (`test_hits`), else against full@1 and the next larger budget.
The controller treats two configurations as ties when the table cannot tell them apart: where a
paired test between them exists, when it does not separate them (p >= 0.05); elsewhere, when one's
accuracy lies inside the other's interval (on a few hundred site images a 1-point gap is noise).
Ties are broken by latency.

A site table is tied to the files it was measured on (each variant's SHA-256, as the device
profile is): a variant rebuilt or replaced since is left out of it, not ranked by a stale figure.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import ZooError, validation_message
from agent.paths import SITE_ACCURACY_NAME
from agent.values import Config
from agent.zoo.manifest import AccuracyPoint, Manifest, Variant
from agent.zoo.stats import mcnemar_exact, unpack_hits, wilson_interval

TableName = Literal["test", "shifted", "site"]
TABLES: tuple[str, ...] = ("test", "shifted", "site")


@dataclass(frozen=True)
class Estimate:
    """An accuracy with its 95% interval and the images it was measured on (None: unknown)."""

    accuracy: float
    low: float
    high: float
    images: int | None
    #: p-values of paired tests (the same images scored by both) against other configurations:
    #: a paired test separates far smaller differences than two intervals can.
    paired: dict[Config, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AccuracyTable:
    """The table in force: its name, where it came from, its figures, and, when another table
    was asked for but could not be used, why (`note`)."""

    name: str
    source: str
    estimates: dict[Config, Estimate]
    note: str | None = None

    def as_dict(self) -> dict[str, object]:
        images = {e.images for e in self.estimates.values()}
        return {
            "table": self.name,
            "source": self.source,
            "images": images.pop() if len(images) == 1 else None,
            "note": self.note,
        }


class SitePoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    budget: float = Field(gt=0, le=1)
    correct: int = Field(ge=0)
    images: int = Field(ge=1)


class SiteAccuracy(BaseModel):
    """The file `zoo eval --data DIR --save` writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str
    classes: list[str]
    measured_at: str
    points: list[SitePoint] = Field(min_length=1)


def _estimate(correct: int, images: int) -> Estimate:
    low, high = wilson_interval(correct, images)
    return Estimate(correct / images, low, high, images)


def manifest_table(manifest: Manifest, name: Literal["test", "shifted"]) -> AccuracyTable:
    """The zoo's own table. `shifted` has no stored counts: its interval is rebuilt from the
    build's shifted split size where the manifest records it, else the figure stands alone."""
    shifted_n = manifest.build.config.get("shifted_size") if manifest.build else None
    estimates: dict[Config, Estimate] = {}
    pairs = _all_pairs(_outcomes(manifest)) if name == "test" else {}
    for variant in manifest.variants:
        for point in variant.accuracy:
            config = Config(variant.name, point.budget)
            if name == "test":
                low, high = point.test_ci or (point.test, point.test)
                paired = pairs[config] if pairs else _paired(variant.name, point, variant)
                estimates[config] = Estimate(point.test, low, high, point.test_n, paired)
            elif point.shifted is not None:
                if isinstance(shifted_n, int) and shifted_n > 0:
                    estimates[config] = _estimate(round(point.shifted * shifted_n), shifted_n)
                else:
                    estimates[config] = Estimate(point.shifted, point.shifted, point.shifted, None)
    return AccuracyTable(name, "manifest", estimates)


def _outcomes(manifest: Manifest) -> dict[Config, NDArray[np.bool_]]:
    """Every test figure's per-image outcomes, when the manifest keeps them for all of them on
    the same images; {} otherwise (then only the manifest's own paired tests are known)."""
    out: dict[Config, NDArray[np.bool_]] = {}
    for variant in manifest.variants:
        for point in variant.accuracy:
            if point.test_hits is None or point.test_n is None:
                return {}
            try:
                hits = unpack_hits(point.test_hits, point.test_n)
            except ValueError:
                return {}
            if abs(float(hits.mean()) - point.test) > 1e-9:
                return {}  # outcomes of other images or another model than the figure's
            out[Config(variant.name, point.budget)] = hits
    return out if len({len(h) for h in out.values()}) == 1 else {}


def _all_pairs(outcomes: dict[Config, NDArray[np.bool_]]) -> dict[Config, dict[Config, float]]:
    """Paired tests between every two configurations scored on the same images, each pair once."""
    out: dict[Config, dict[Config, float]] = {c: {} for c in outcomes}
    items = list(outcomes.items())
    for i, (a, hits_a) in enumerate(items):
        for b, hits_b in items[i + 1 :]:
            out[a][b] = out[b][a] = mcnemar_exact(hits_a, hits_b)
    return out


def _paired(name: str, point: AccuracyPoint, variant: Variant) -> dict[Config, float]:
    """The manifest's paired tests of one test figure: against full@1 and against the next
    larger budget of the same variant."""
    out: dict[Config, float] = {}
    if point.p_vs_full is not None:
        out[Config("full", 1.0)] = point.p_vs_full
    larger = [p.budget for p in variant.accuracy if p.budget > point.budget]
    if point.p_vs_larger_budget is not None and larger:
        out[Config(name, min(larger))] = point.p_vs_larger_budget
    return out


def load_site_table(path: Path, manifest: Manifest) -> AccuracyTable:
    """The site table at `path`, restricted to the variants whose files it was measured on.
    Raises ZooError (one line) when the file is missing, unreadable or invalid."""
    try:
        site = SiteAccuracy.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ZooError(
            f"{path}: no site accuracy table (make one with `edge-agent zoo eval --data DIR --save`)"
        ) from None
    except OSError as exc:
        raise ZooError(f"{path}: cannot read site accuracy table: {exc.strerror or exc}") from None
    except ValidationError as exc:
        raise ZooError(f"{path}: invalid site accuracy table at {validation_message(exc, '(root)')}") from None
    hashes = {v.name: v.sha256 for v in manifest.variants}
    estimates = {
        Config(p.variant, p.budget): _estimate(p.correct, p.images)
        for p in site.points
        if hashes.get(p.variant) == p.sha256
    }
    if not estimates:
        raise ZooError(f"{path}: the site accuracy table was measured on other model files than this zoo's")
    stale = sorted({p.variant for p in site.points if hashes.get(p.variant) != p.sha256})
    note = f"measured on other files of {', '.join(stale)}: those are left out" if stale else None
    return AccuracyTable("site", str(path), estimates, note)


def select_table(manifest: Manifest, wanted: str, state_dir: Path) -> AccuracyTable:
    """The table the policy names; `site` falls back to `test` (with the reason in `note`)
    when there is no usable site table, so a gateway without one keeps serving."""
    if wanted == "site":
        try:
            return load_site_table(state_dir / SITE_ACCURACY_NAME, manifest)
        except ZooError as exc:
            test = manifest_table(manifest, "test")
            return AccuracyTable(test.name, test.source, test.estimates, f"site table not used: {exc.message}")
    if wanted == "shifted":
        shifted = manifest_table(manifest, "shifted")
        if shifted.estimates:
            return shifted
        test = manifest_table(manifest, "test")
        return AccuracyTable(test.name, test.source, test.estimates, "the manifest has no shifted figures")
    return manifest_table(manifest, "test")


def site_table_file(data: str, classes: list[str], points: list[SitePoint]) -> str:
    """The JSON text of a site table, as `zoo eval --save` writes it."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return SiteAccuracy(data=data, classes=classes, measured_at=now, points=points).model_dump_json(indent=2) + "\n"
