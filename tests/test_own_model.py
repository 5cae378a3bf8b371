"""An operator's own model: torch CNNs of another architecture (96 px, ImageNet mean/std,
probabilities out, one of them NHWC) imported with `zoo import`, made int8, profiled, evaluated
on the operator's images, and served; every answer checked against onnxruntime run directly
with the preprocessing written out by hand. And docs/own-model.md, run command by command."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from agent.zoo.importer import Calibration, import_models
from agent.zoo.manifest import Preprocess, load_manifest
from agent.zoo.sessions import verify_zoo
from tests.daemon import REPO, DaemonProcess, eventually, serving_as_written
from tests.own_models import CLASSES, MEAN, STD, export_cnns, reference_probabilities, write_images

pytestmark = pytest.mark.daemon


def agent_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own")
    images = write_images(root / "images", 12)
    files = export_cnns(root / "models", images)
    return {"root": root, "images": images, **files}


@pytest.fixture(scope="module")
def zoo(own: dict[str, Path]) -> Path:
    from agent.cli.zoo_files import decode_files, image_folder

    out = own["root"] / "zoo"
    files, labels = image_folder(own["images"], CLASSES)
    manifest = import_models(
        out,
        {"full": own["model"], "small": own["small"]},
        CLASSES,
        Preprocess(mean=MEAN, std=STD),
        int8=True,
        calibration=Calibration(lambda size, resize: decode_files(files, size, resize), labels),
        log=lambda m: None,
    )
    assert [v.name for v in manifest.variants] == ["full", "small", "int8"]
    return out


def test_import_reads_the_graph_and_finds_what_the_output_holds(zoo: Path) -> None:
    manifest = load_manifest(zoo / "manifest.json")
    full, small, int8 = (manifest.variant(n) for n in ("full", "small", "int8"))
    assert manifest.classes == CLASSES
    assert full.resolution == small.resolution == 96 and full.tokens == 0 and full.token_input is None
    assert full.output == small.output == int8.output == "probabilities"  # softmax in the graph, found by running it
    assert full.preprocess.layout == "nchw" and small.preprocess.layout == "nhwc"
    assert full.preprocess.mean == MEAN and int8.preprocess.std == STD
    assert full.parameters > small.parameters > 0 and full.budgets == (1.0,)
    assert "quantization" in int8.description


def test_an_imported_zoo_round_trips_verify_and_a_tampered_file_is_named(zoo: Path) -> None:
    assert verify_zoo(zoo) == {"full": None, "small": None, "int8": None}
    small = zoo / "small.onnx"
    original = small.read_bytes()
    try:
        small.write_bytes(original + b"\0")
        result = agent_cli("zoo", "verify", "--zoo", str(zoo), cwd=REPO)
        assert result.returncode == 1 and "FAIL small" in result.stdout and "SHA-256 mismatch" in result.stdout
        assert "ok   full" in result.stdout and "Traceback" not in result.stdout + result.stderr
    finally:
        small.write_bytes(original)


def test_a_zoo_without_a_profile_is_refused_only_when_the_policy_must_choose(zoo: Path, tmp_path: Path) -> None:
    """No device profile, no latency in the manifest: with three variants to choose from the
    daemon refuses to start and says which command makes the profile; with one allowed it serves."""
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nslo: {latency_ms: 50}\n")
    d = DaemonProcess(tmp_path / "d", args=["--zoo", str(zoo), "--policy", str(policy)])
    with pytest.raises(RuntimeError, match="exited with 1"):
        d.start(timeout=60)
    d.close()
    assert "no latency profile" in d.log() and f"edge-agent zoo profile --zoo {zoo}" in d.log()
    policy.write_text("version: 1\nslo: {latency_ms: 50}\nallowed: {variants: [small]}\n")
    d = DaemonProcess(tmp_path / "d2", args=["--zoo", str(zoo), "--policy", str(policy)]).start()
    try:
        with d.client() as c:
            png = (zoo.parent / "images" / "rust" / "0.png").read_bytes()
            assert c.classify(png, "image/png")["label"] in CLASSES
    finally:
        d.stop()


@pytest.fixture(scope="module")
def measured(zoo: Path, own: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A daemon work folder whose state holds this zoo's device profile and site table."""
    work = tmp_path_factory.mktemp("served")
    state = work / "state"
    result = agent_cli(
        "zoo", "profile", "--zoo", str(zoo), "--out", str(state / "device-profile.json"), "--runs", "15", cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = agent_cli(
        "zoo", "eval", "--zoo", str(zoo), "--data", str(own["images"]), "--save", "--state-dir", str(state), cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return work


def test_served_answers_match_onnxruntime_run_directly(zoo: Path, own: dict[str, Path], measured: Path) -> None:
    policy = measured / "policy.yaml"
    policy.write_text("version: 1\naccuracy: site\nslo: {latency_ms: 200}\n")
    d = DaemonProcess(measured, args=["--zoo", str(zoo), "--policy", str(policy)]).start()
    try:
        with (
            d.client() as c,
            httpx.Client(
                transport=httpx.HTTPTransport(uds=str(d.socket_path)), base_url="http://edge-agent", timeout=30
            ) as http,
        ):
            assert c.status()["controller"]["accuracy"]["table"] == "site"
            for config, model, nhwc in (("full@1", own["model"], False), ("small@1", own["small"], True)):
                c.pin(config, 600, "test")
                for name in CLASSES:
                    path = own["images"] / name / "3.png"
                    ref = reference_probabilities(model, Image.open(path), nhwc)
                    got = c.classify(path.read_bytes(), "image/png")
                    assert got["variant"] == config.split("@")[0]
                    assert got["label"] == CLASSES[int(ref.argmax())]
                    assert got["score"] == pytest.approx(float(ref.max()), abs=1e-4)
            c.unpin()
            # v2: the canonical FP32 tensor in [0, 1]; the daemon applies mean/std itself.
            img = (
                Image.open(own["images"] / "dent" / "5.png").convert("RGB").resize((96, 96), Image.Resampling.BILINEAR)
            )
            x = np.asarray(img, np.float32).transpose(2, 0, 1)[None] / 255.0
            body = {
                "inputs": [{"name": "image", "shape": [1, 3, 96, 96], "datatype": "FP32", "data": x.ravel().tolist()}]
            }
            r = http.post("/v2/models/full/infer", json=body)
            assert r.status_code == 200, r.text
            out = {o["name"]: o for o in r.json()["outputs"]}
            ref = reference_probabilities(own["model"], img)
            assert out["label"]["data"] == [CLASSES[int(ref.argmax())]]
            np.testing.assert_allclose(out["probabilities"]["data"], ref, atol=1e-4)
            # probabilities are used as they are: no second softmax flattening them
            assert max(out["probabilities"]["data"]) == pytest.approx(float(ref.max()), abs=1e-4)
            r = http.post(
                "/v1/classify?explain=true",
                content=(own["images"] / "dent" / "5.png").read_bytes(),
                headers={"content-type": "image/png"},
            )
            assert r.status_code == 422 and r.json()["error"]["code"] == "explain_unavailable"
            assert "no attention output" in r.json()["error"]["message"]
    finally:
        d.stop()


def _burn(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1000003


def test_the_controller_switches_between_imported_variants_under_load(zoo: Path, measured: Path) -> None:
    """SLO between small's and full's profiled latency (x 3): idle, the daemon serves the most
    accurate feasible variant; with every core burning it steps down to a cheaper one."""
    profile = json.loads((measured / "state" / "device-profile.json").read_text())
    p95 = {
        n: next(p["p95_ms"] for p in v["latency"]["points"] if p["threads"] == 1)
        for n, v in profile["variants"].items()
    }
    assert p95["full"] > p95["small"]
    slo = round(p95["full"] * 3, 2)
    policy = measured / "load.yaml"
    policy.write_text(
        f"version: 1\nslo: {{percentile: 95, latency_ms: {slo}, window_s: 3, headroom: 0.85}}\n"
        "hysteresis: {dwell_s: 1, min_switch_interval_s: 0.5}\nallowed: {variants: [full, small]}\n"
    )
    d = DaemonProcess(measured, args=["--zoo", str(zoo), "--policy", str(policy)]).start()
    stop_client, stop_burn = threading.Event(), multiprocessing.Event()
    seen: set[str] = set()
    png = (zoo.parent / "images" / "good" / "1.png").read_bytes()

    def client_loop() -> None:
        with d.client() as c:
            while not stop_client.is_set():
                with contextlib.suppress(Exception):
                    seen.add(c.classify(png, "image/png")["variant"])
                time.sleep(0.005)

    client = threading.Thread(target=client_loop)
    client.start()
    burners = [multiprocessing.Process(target=_burn, args=(stop_burn,)) for _ in range(3 * (os.cpu_count() or 1))]
    try:
        with d.client() as c:
            eventually(lambda: c.status()["config"]["variant"] == "full", 20, "full while idle")
            for b in burners:
                b.start()
            eventually(lambda: c.status()["config"]["variant"] == "small", 40, "small under contention")
            assert "step down" in c.status()["controller"]["last_reason"]
    finally:
        stop_burn.set()
        for b in burners:
            b.join(10)
        stop_client.set()
        client.join(10)
        d.stop()
    assert {"full", "small"} <= seen


def _doc_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def test_the_walkthrough_runs_as_written(own: dict[str, Path], tmp_path: Path) -> None:
    doc = (REPO / "docs" / "own-model.md").read_text()
    commands = [line for block in _doc_blocks(doc, "sh") for line in block.splitlines() if line.strip()]
    [policy] = _doc_blocks(doc, "yaml")
    work = tmp_path
    (work / "model.onnx").write_bytes(own["model"].read_bytes())
    (work / "small.onnx").write_bytes(own["small"].read_bytes())
    os.symlink(own["images"], work / "images")
    (work / "my-policy.yaml").write_text(policy)
    env = {**os.environ, "STATE_DIRECTORY": str(work / "state"), "COLUMNS": "200"}
    serve = next(c for c in commands if c.startswith("edge-agent serve"))
    curl = next(c for c in commands if c.startswith("curl"))
    for command in commands:
        if command in (serve, curl):
            continue
        assert command.startswith("edge-agent "), command
        result = subprocess.run(
            [sys.executable, "-m", "agent", *shlex.split(command)[1:]],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
    with serving_as_written(shlex.split(serve)[1:], work, env, work / "notify.sock"):
        out = subprocess.run(curl, shell=True, cwd=work, capture_output=True, text=True, timeout=30)
        answer = json.loads(out.stdout)
        assert answer["label"] in CLASSES and answer["variant"] in {"full", "small", "int8"}, out.stdout
