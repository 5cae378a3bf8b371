"""The model zoo through onnxruntime: budgets, integrity, bring-your-own models, images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.errors import ZooError
from agent.values import BUDGETS
from agent.zoo.manifest import keep_count, load_manifest
from agent.zoo.preprocess import image_to_input
from agent.zoo.sessions import SessionSettings, describe_onnx, open_variant, open_zoo, resolve_file, softmax, verify_zoo
from model_zoo import data


@pytest.fixture(scope="module")
def zoo(shipped_zoo: Path):
    return open_zoo(shipped_zoo, SessionSettings(intra_threads=1))


@pytest.fixture(scope="module")
def samples() -> list[data.Sample]:
    return [data.sample(0, "test", i) for i in range(10)]


def test_shipped_zoo_has_four_variants_that_all_load(zoo) -> None:
    assert {"full", "pruned", "int8", "lowres"} <= set(zoo.variants)
    assert zoo.failures == {}


def test_every_variant_classifies_test_images(zoo, samples) -> None:
    for variant in zoo.variants.values():
        correct = 0
        for s in samples:
            pred = variant.run(image_to_input(s.image, variant.spec.resolution), 1.0)
            assert pred.probs.shape == (1, len(zoo.classes))
            assert np.isclose(pred.probs.sum(), 1.0, atol=1e-4)
            correct += int(pred.probs.argmax() == s.label)
        assert correct >= 7, f"{variant.name}: {correct}/10"


@pytest.mark.parametrize("keep", [0, 1, -5, 10_000])
def test_token_keep_out_of_range_is_clamped_in_the_graph(zoo, samples, keep: int) -> None:
    full = zoo.variants["full"]
    x = image_to_input(samples[0].image, full.spec.resolution)
    clamped = min(max(keep, 1), full.spec.tokens)
    out = full.session.run(None, {"image": x, "token_keep": np.array([keep], dtype=np.int64)})
    ref = full.session.run(None, {"image": x, "token_keep": np.array([clamped], dtype=np.int64)})
    assert np.all(np.isfinite(out[0]))
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-5, atol=1e-5)


def test_token_keep_all_equals_budget_one_and_budget_changes_the_answer(zoo, samples) -> None:
    full = zoo.variants["full"]
    x = np.concatenate([image_to_input(s.image, full.spec.resolution) for s in samples])
    n = full.spec.tokens
    run = lambda k: full.session.run(None, {"image": x, "token_keep": np.array([k], dtype=np.int64)})[0]  # noqa: E731
    np.testing.assert_allclose(softmax(run(n)), full.run(x, 1.0).probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(n), run(n + 1), rtol=1e-6)
    assert not np.allclose(run(n), run(1)), "keeping 1 token should change the logits"


def test_attention_map_covers_the_patch_grid(zoo, samples) -> None:
    full = zoo.variants["full"]
    pred = full.run(image_to_input(samples[1].image, full.spec.resolution), 0.5)
    grid = int(np.sqrt(full.spec.tokens))
    assert pred.attention is not None and pred.attention.shape == (1, grid, grid)
    assert np.isclose(pred.attention.sum(), 1.0, atol=0.05)
    assert pred.kept_tokens == keep_count(0.5, full.spec.tokens)


def test_hash_mismatch_names_the_variant_and_others_still_load(zoo_copy: Path) -> None:
    path = zoo_copy / "pruned.onnx"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    loaded = open_zoo(zoo_copy, SessionSettings(intra_threads=1))
    assert "pruned" in loaded.failures and "SHA-256 mismatch" in loaded.failures["pruned"]
    assert "full" in loaded.variants and "int8" in loaded.variants
    assert verify_zoo(zoo_copy)["pruned"] is not None


def test_missing_file_names_the_variant(zoo_copy: Path) -> None:
    (zoo_copy / "lowres.onnx").unlink()
    loaded = open_zoo(zoo_copy, SessionSettings(intra_threads=1))
    assert "lowres" in loaded.failures and "missing" in loaded.failures["lowres"]
    assert "full" in loaded.variants


def test_random_bytes_with_matching_hash_is_refused_by_onnxruntime(zoo_copy: Path) -> None:
    path = zoo_copy / "int8.onnx"
    path.write_bytes(os.urandom(4096))
    manifest = json.loads((zoo_copy / "manifest.json").read_text())
    from agent.zoo.sessions import sha256_file

    for v in manifest["variants"]:
        if v["name"] == "int8":
            v["sha256"] = sha256_file(path)
    (zoo_copy / "manifest.json").write_text(json.dumps(manifest))
    loaded = open_zoo(zoo_copy, SessionSettings(intra_threads=1))
    assert "int8" in loaded.failures and "onnxruntime cannot load" in loaded.failures["int8"]
    assert "full" in loaded.variants


def test_manifest_path_escaping_the_zoo_is_refused(zoo_copy: Path, tmp_path: Path) -> None:
    manifest = json.loads((zoo_copy / "manifest.json").read_text())
    manifest["variants"][0]["file"] = "../outside.onnx"
    (zoo_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ZooError, match="inside the zoo folder"):
        load_manifest(zoo_copy / "manifest.json")
    # A symlink that points outside is caught when the path is resolved.
    (tmp_path / "outside.onnx").write_bytes(b"x")
    (zoo_copy / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    with pytest.raises(ZooError, match="leaves the zoo folder"):
        resolve_file(zoo_copy, "link.onnx")


def test_invalid_manifest_error_names_file_and_field(zoo_copy: Path) -> None:
    manifest = json.loads((zoo_copy / "manifest.json").read_text())
    manifest["variants"][1]["sha256"] = "nothex"
    (zoo_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ZooError, match=r"manifest.json: invalid manifest at variants\.1\.sha256"):
        load_manifest(zoo_copy / "manifest.json")


def test_plain_onnx_classifier_without_token_keep_runs_at_budget_one(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.conv(x).mean(dim=(2, 3)))

    path = tmp_path / "plain.onnx"
    torch.onnx.export(
        Plain().eval(),
        (torch.rand(1, 3, 48, 48),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "n"}},
        dynamo=False,
    )
    spec = describe_onnx(path, "mine", tmp_path)
    assert spec.token_input is None and spec.budgets == (1.0,) and spec.resolution == 48
    variant = open_variant(tmp_path, spec, SessionSettings(intra_threads=1))
    pred = variant.run(image_to_input(np.zeros((10, 20, 3), np.uint8), 48), budget=0.25)
    assert pred.budget == 1.0 and pred.attention is None and pred.probs.shape == (1, 3)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (37, 211), 128),
        Image.new("RGBA", (300, 300), (10, 20, 30, 0)),
        Image.fromarray(np.full((64, 90), 40000, dtype=np.uint16)),
        Image.new("P", (5, 5)),
        Image.new("RGB", (1, 1)),
        Image.new("CMYK", (129, 127)),
    ],
    ids=["gray-odd", "rgba", "16-bit", "palette", "1px", "cmyk"],
)
def test_any_image_mode_and_size_is_converted(zoo, image: Image.Image) -> None:
    for variant in zoo.variants.values():
        x = image_to_input(image, variant.spec.resolution)
        assert x.shape == (1, 3, variant.spec.resolution, variant.spec.resolution) and x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert np.isfinite(variant.run(x, 0.5).probs).all()


def test_16_bit_image_keeps_its_brightness() -> None:
    x = image_to_input(Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16)), 8)
    assert abs(float(x.mean()) - 0.5) < 0.01


def test_manifest_lists_accuracy_and_latency_for_every_budget(shipped_zoo: Path) -> None:
    manifest = load_manifest(shipped_zoo / "manifest.json")
    assert manifest.build is not None and manifest.build.versions["onnxruntime"]
    for v in manifest.variants:
        assert [p.budget for p in v.accuracy] == list(BUDGETS)
        assert v.latency is not None
        for b in BUDGETS:
            for t in (1, 2):
                assert v.latency.lookup(b, t) is not None
