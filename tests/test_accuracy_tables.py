"""Which accuracy table ranks the configurations: the zoo's test or shifted figures, or a site
table measured on the gateway, tied to the model files it was measured on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import ZooError
from agent.paths import default_zoo_dir
from agent.values import Config
from agent.zoo.accuracy_tables import SitePoint, load_site_table, manifest_table, select_table, site_table_file
from agent.zoo.manifest import Manifest, load_manifest
from agent.zoo.stats import mcnemar_exact, pack_hits, unpack_hits

MANIFEST = load_manifest(default_zoo_dir() / "manifest.json")


def write_site(path: Path, points: list[SitePoint]) -> None:
    path.write_text(site_table_file("/images", list(MANIFEST.classes), points))


def point(variant: str, budget: float, correct: int, images: int = 200, sha: str | None = None) -> SitePoint:
    return SitePoint(
        variant=variant, sha256=sha or MANIFEST.variant(variant).sha256, budget=budget, correct=correct, images=images
    )


def test_test_table_carries_the_manifest_intervals() -> None:
    table = select_table(MANIFEST, "test", Path("/nonexistent"))
    full = table.estimates[Config("full", 1.0)]
    assert table.name == "test" and table.note is None
    assert full.low < full.accuracy < full.high and full.images == MANIFEST.variant("full").accuracy[0].test_n


def test_shifted_table_has_intervals_from_the_split_size() -> None:
    table = select_table(MANIFEST, "shifted", Path("/nonexistent"))
    est = table.estimates[Config("full", 1.0)]
    assert table.name == "shifted" and est.images == MANIFEST.build.config["shifted_size"]  # type: ignore[union-attr]
    assert est.high - est.low > 0.02  # 1000 images: a few points wide


def test_site_table_is_read_with_wilson_intervals(tmp_path: Path) -> None:
    write_site(tmp_path / "site-accuracy.json", [point("full", 1.0, 180), point("lowres", 1.0, 190)])
    table = select_table(MANIFEST, "site", tmp_path)
    assert table.name == "site" and table.note is None
    est = table.estimates[Config("lowres", 1.0)]
    assert est.accuracy == 0.95 and est.images == 200 and est.low < 0.95 < est.high


def test_site_falls_back_to_test_and_says_why(tmp_path: Path) -> None:
    table = select_table(MANIFEST, "site", tmp_path)
    assert table.name == "test" and table.note and "no site accuracy table" in table.note
    (tmp_path / "site-accuracy.json").write_text("{not json")
    table = select_table(MANIFEST, "site", tmp_path)
    assert table.name == "test" and table.note and "invalid site accuracy table" in table.note


def test_figures_of_other_model_files_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "site-accuracy.json"
    write_site(path, [point("full", 1.0, 150), point("lowres", 1.0, 190, sha="0" * 64)])
    table = load_site_table(path, MANIFEST)
    assert set(table.estimates) == {Config("full", 1.0)} and table.note and "lowres" in table.note
    write_site(path, [point("full", 1.0, 150, sha="0" * 64)])
    with pytest.raises(ZooError, match="other model files"):
        load_site_table(path, MANIFEST)


def with_outcomes(shift: int = 0) -> Manifest:
    """The shipped manifest with made-up per-image outcomes that agree with its figures (first
    k images right), or, with `shift`, outcomes one image off every figure."""
    variants = []
    for v in MANIFEST.variants:
        points = []
        for p in v.accuracy:
            n = p.test_n or 4000
            hits = np.arange(n) < round(p.test * n) + shift
            points.append(p.model_copy(update={"test_hits": pack_hits(hits), "test_n": n}))
        variants.append(v.model_copy(update={"accuracy": points}))
    return MANIFEST.model_copy(update={"variants": variants})


def test_kept_outcomes_give_a_paired_test_between_any_two_configurations() -> None:
    manifest = with_outcomes()
    estimates = manifest_table(manifest, "test").estimates
    a, b = Config("pruned", 0.5), Config("int8-lowres", 0.7)
    assert set(estimates[a].paired) == set(estimates) - {a}
    ha = unpack_hits(manifest.variant("pruned").accuracy[2].test_hits or "", 4000)
    hb = unpack_hits(manifest.variant("int8-lowres").accuracy[1].test_hits or "", 4000)
    assert estimates[a].paired[b] == estimates[b].paired[a] == mcnemar_exact(ha, hb)


def test_outcomes_that_disagree_with_the_figures_are_not_used() -> None:
    """Outcomes of other images or another model: only the manifest's own tests are known."""
    estimates = manifest_table(with_outcomes(shift=1), "test").estimates
    assert set(estimates[Config("pruned", 0.5)].paired) == {Config("full", 1.0), Config("pruned", 0.7)}
    assert set(estimates[Config("full", 1.0)].paired) == set()
