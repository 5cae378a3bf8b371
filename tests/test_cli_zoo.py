"""The zoo CLI as a user runs it: a subprocess, including without torch installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from model_zoo import data
from tests.samples import agreed_png

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An import path on which torch and onnx (the train extra) cannot be imported."""
    blocked = tmp_path_factory.mktemp("blocked")
    for name in ("torch", "onnx", "onnxscript"):
        (blocked / name).mkdir()
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    return {"PYTHONPATH": f"{blocked}{os.pathsep}{REPO}"}


@pytest.mark.daemon
def test_zoo_info_and_verify_without_torch(no_torch: dict[str, str]) -> None:
    info = cli("zoo", "info", env=no_torch)
    assert info.returncode == 0, info.stderr
    for name in ("full", "pruned", "int8", "lowres"):
        assert name in info.stdout
    verify = cli("zoo", "verify", env=no_torch)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count("ok") >= 4


@pytest.mark.daemon
def test_classify_an_image_with_every_variant_without_torch(no_torch: dict[str, str], tmp_path: Path) -> None:
    png = agreed_png(tmp_path)
    result = cli("zoo", "run", str(png), env=no_torch)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if png.name in line]
    assert len(rows) >= 4
    assert all("scratch" in row.split(png.name, 1)[1] for row in rows[:1])


@pytest.mark.daemon
def test_zoo_build_without_torch_says_what_to_install(no_torch: dict[str, str], tmp_path: Path) -> None:
    result = cli("zoo", "build", "--out", str(tmp_path), env=no_torch)
    assert result.returncode == 1
    assert "pip install -e '.[train]'" in result.stdout


@pytest.mark.daemon
def test_verify_fails_on_a_damaged_zoo(zoo_copy: Path) -> None:
    (zoo_copy / "pruned.onnx").write_bytes(b"broken")
    result = cli("zoo", "verify", "--zoo", str(zoo_copy))
    assert result.returncode == 1
    assert "FAIL pruned" in result.stdout and "ok   full" in result.stdout


@pytest.mark.daemon
def test_whole_build_pipeline_on_a_tiny_config(tmp_path: Path, tiny_build: tuple[Any, Any, Path]) -> None:
    built = tmp_path / "zoo"
    shutil.copytree(tiny_build[2], built)  # the rescore below rewrites the manifest
    names = {"full", "pruned", "lowres", "int8", "int8-lowres"}
    assert {p.stem for p in built.glob("*.onnx")} == names
    verify = cli("zoo", "verify", "--zoo", str(built))
    assert verify.returncode == 0, verify.stdout
    profile = cli("zoo", "profile", "--zoo", str(built), "--out", str(tmp_path / "device.json"), "--runs", "3")
    assert profile.returncode == 0, profile.stdout + profile.stderr
    from agent.zoo.manifest import DeviceProfile

    device = DeviceProfile.model_validate_json((tmp_path / "device.json").read_text())
    assert set(device.variants) == names
    _rescore_restores_the_outcomes(built)


def _rescore_restores_the_outcomes(zoo: Path) -> None:
    """The build keeps every test figure's per-image outcomes; `model_zoo.rescore` writes the
    same ones into a manifest that lacks them, and refuses (writing nothing) when a figure does
    not match what it scores."""
    built = json.loads((zoo / "manifest.json").read_text())
    points = [p for v in built["variants"] for p in v["accuracy"]]
    assert points and all(p["test_hits"] for p in points)
    stripped = json.loads(json.dumps(built))
    for v in stripped["variants"]:
        for p in v["accuracy"]:
            p["test_hits"] = None
    (zoo / "manifest.json").write_text(json.dumps(stripped))
    rescore = [sys.executable, "-m", "model_zoo.rescore", "--zoo", str(zoo), "--threads", "1"]
    done = subprocess.run(rescore, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    again = json.loads((zoo / "manifest.json").read_text())
    assert [p["test_hits"] for v in again["variants"] for p in v["accuracy"]] == [p["test_hits"] for p in points]
    stripped["variants"][0]["accuracy"][0]["test"] = 0.0001
    (zoo / "manifest.json").write_text(json.dumps(stripped))
    refused = subprocess.run(rescore, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert refused.returncode != 0 and "figures differ from the manifest, nothing written" in refused.stderr
    assert json.loads((zoo / "manifest.json").read_text()) == stripped


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """(config, manifest, folder) of one tiny build made by `edge-agent zoo build`, as an
    operator runs it; shared by the pipeline test and the tests that compare builds."""
    pytest.importorskip("torch")
    from agent.zoo.manifest import load_manifest
    from model_zoo.build import load_config

    config = REPO / "model_zoo/configs/tiny.yaml"
    out = tmp_path_factory.mktemp("tiny") / "a"
    result = cli("zoo", "build", "--config", str(config), "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return load_config(config), load_manifest(out / "manifest.json"), out


@pytest.mark.daemon  # not a daemon, but as slow: a torch build
def test_same_seed_rebuilds_the_same_fp32_models(tmp_path: Path, tiny_build: tuple[Any, Any, Path]) -> None:
    from model_zoo.build import build

    cfg, first, _ = tiny_build
    second = build(cfg, tmp_path / "b", lambda _: None, lambda *_: None)
    for name in ("full", "pruned", "lowres"):
        a, b = first.variant(name), second.variant(name)
        assert a.sha256 == b.sha256, f"{name} differs between two builds with the same seed"
        assert [p.test for p in a.accuracy] == [p.test for p in b.accuracy]
    other = build(cfg.model_copy(update={"seed": 1}), tmp_path / "c", lambda _: None, lambda *_: None)
    assert other.variant("full").sha256 != first.variant("full").sha256


@pytest.mark.daemon  # not a daemon, but as slow: a torch build
def test_a_graph_ranking_tokens_elsewhere_than_training_did_keeps_the_trained_weights(
    tmp_path: Path, tiny_build: tuple[Any, Any, Path]
) -> None:
    """`prune_blocks` places the ranking in the exported graph, `train_prune_blocks` in the
    training batches: trained alike, two builds differ in the graph only."""
    import onnx
    from onnx import numpy_helper

    from model_zoo.build import build

    cfg, first, first_dir = tiny_build
    assert cfg.train_prune_blocks is not None and cfg.train_prune_blocks != cfg.prune_blocks  # as shipped
    moved = cfg.model_copy(update={"prune_blocks": [0]})
    served_elsewhere = build(moved, tmp_path / "b", lambda _: None, lambda *_: None)

    def weights(folder: Path) -> tuple[dict[str, bytes], list[bytes]]:
        """Named parameters by name; the matmul weights (named by the exporter) as a multiset."""
        inits = onnx.load(str(folder / "full.onnx")).graph.initializer
        named = {t.name: numpy_helper.to_array(t).tobytes() for t in inits if not t.name.startswith("onnx::")}
        matmuls = sorted(numpy_helper.to_array(t).tobytes() for t in inits if t.name.startswith("onnx::MatMul"))
        return named, matmuls

    a, b = weights(first_dir), weights(tmp_path / "b")
    assert a[0] == b[0] and a[1] == b[1] and len(a[1]) >= 4
    assert first.variant("full").sha256 != served_elsewhere.variant("full").sha256
    assert served_elsewhere.build and served_elsewhere.build.config["prune_blocks"] == [0]


def _image_folder(root: Path, per_class: int) -> Path:
    """Labelled images as an operator keeps them: one folder per class."""
    for path in data.write_samples(root / "flat", "test", per_class):
        label = path.name.rsplit("_", 1)[0]
        (root / "site" / label).mkdir(parents=True, exist_ok=True)
        path.rename(root / "site" / label / path.name)
    return root / "site"


@pytest.mark.daemon
def test_zoo_eval_on_own_images_saves_the_site_table(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path, 2)
    state = tmp_path / "state"
    result = cli("zoo", "eval", "--data", str(folder), "--save", "--state-dir", str(state), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"accuracy on {2 * len(data.CLASSES)} images" in result.stdout
    from agent.paths import default_zoo_dir
    from agent.zoo.accuracy_tables import load_site_table
    from agent.zoo.manifest import load_manifest

    manifest = load_manifest(default_zoo_dir() / "manifest.json")
    table = load_site_table(state / "site-accuracy.json", manifest)
    assert table.name == "site" and table.note is None
    assert len(table.estimates) == sum(len(v.budgets) for v in manifest.variants)
    assert {e.images for e in table.estimates.values()} == {2 * len(data.CLASSES)}
    assert all(0 <= e.low <= e.accuracy <= e.high <= 1 for e in table.estimates.values())


@pytest.mark.daemon
def test_zoo_eval_refuses_a_folder_that_is_not_a_class_and_save_without_data(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path, 1)
    (folder / "scratchh").mkdir()
    result = cli("zoo", "eval", "--data", str(folder))
    assert result.returncode == 1 and "scratchh" in result.stdout and "not classes of the zoo" in result.stdout
    result = cli("zoo", "eval", "--save")
    assert result.returncode == 1 and "--save needs --data" in result.stdout


@pytest.mark.daemon
def test_zoo_build_on_own_images_says_how_it_split_and_refuses_a_set_too_small(tmp_path: Path) -> None:
    from tests.own_models import write_images

    small = write_images(tmp_path / "small", 12)  # 36 images: val and test would get 4 each
    tiny = str(REPO / "model_zoo/configs/tiny.yaml")
    result = cli("zoo", "build", "--config", tiny, "--data", str(small), "--out", str(tmp_path / "z1"), timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert "val would hold 4 images, fewer than 20" in result.stdout
    assert "train_size, val_size, test_size, shifted_size size the synthetic set only" in result.stdout

    enough = write_images(tmp_path / "enough", 34)  # 102 images: 10 val and test at 10%, 25 at 25%
    config = tmp_path / "own.yaml"
    config.write_text((REPO / "model_zoo/configs/tiny.yaml").read_text() + "val_share: 0.25\ntest_share: 0.25\n")
    out = tmp_path / "z2"
    result = cli("zoo", "build", "--config", str(config), "--data", str(enough), "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "split 50%/25%/25% (seed 0)" in result.stdout
    from agent.zoo.manifest import load_manifest

    manifest = load_manifest(out / "manifest.json")
    assert manifest.classes == ["dent", "good", "rust"]
    assert all(p.shifted is None for v in manifest.variants for p in v.accuracy)  # no shifted set, no shifted figure
    assert {p.test_n for v in manifest.variants for p in v.accuracy} == {26}


@pytest.mark.daemon
def test_every_zoo_command_on_a_folder_without_a_zoo_says_so_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    png = agreed_png(tmp_path / "img")
    for args in (
        ["zoo", "run", str(png), "--zoo", str(empty)],
        ["zoo", "info", "--zoo", str(empty)],
        ["zoo", "verify", "--zoo", str(empty)],
        ["zoo", "eval", "--zoo", str(empty)],
        ["zoo", "profile", "--zoo", str(empty), "--out", str(tmp_path / "p.json")],
    ):
        result = cli(*args)
        assert result.returncode == 1, args
        assert "cannot read manifest" in result.stdout and "Traceback" not in result.stdout + result.stderr, args
    serve = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--zoo", str(empty), "--socket", str(tmp_path / "s.sock")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "STATE_DIRECTORY": str(tmp_path / "st")},
    )
    assert serve.returncode == 1 and "cannot read manifest" in serve.stdout + serve.stderr
    assert "Traceback" not in serve.stdout + serve.stderr


def test_int8_schemes_within_5_percent_of_the_fastest_are_chosen_by_a_fixed_order_not_by_the_timing() -> None:
    """Two builds of seed 0 timed dynamic-s8 at 0.87x and static-qoperator at 0.88x, then
    0.89x and 0.86x: both pick dynamic-s8, so the two builds' int8 files are the same. A
    scheme clearly faster (beyond 5%) still wins."""
    from model_zoo.build import choose_int8

    first = [("static-qoperator-u8s8", 0.930, 0.88), ("static-qdq-u8s8", 0.930, 0.96), ("dynamic-s8", 0.932, 0.87)]
    second = [("static-qoperator-u8s8", 0.930, 0.86), ("static-qdq-u8s8", 0.930, 0.91), ("dynamic-s8", 0.932, 0.89)]
    assert choose_int8(first)[0] == choose_int8(second)[0] == "dynamic-s8"
    assert (
        choose_int8([("static-qoperator-u8s8", 0.93, 0.80), ("dynamic-s8", 0.93, 0.90)])[0] == "static-qoperator-u8s8"
    )
    assert choose_int8([("static-qdq-u8s8", 0.93, 0.90)])[0] == "static-qdq-u8s8"
