"""Score a built zoo's test split again and keep every configuration's per-image outcomes in
its manifest (`test_hits`), so that the controller can compare any two configurations paired.

`edge-agent zoo build` writes them itself; this brings a zoo built before it did up to date
without training again. The synthetic test split is regenerated from the build's seed, scored
through onnxruntime, and each figure must come out as the manifest has it: a mismatch means
other models or other data than the build's, and nothing is written.

    python -m model_zoo.rescore [--zoo model_zoo] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from agent.paths import default_zoo_dir
from agent.private_files import write_atomic
from agent.zoo.evaluation import batch_inputs, correct_mask
from agent.zoo.manifest import MANIFEST_NAME, Manifest, Variant, load_manifest
from agent.zoo.sessions import SessionSettings, open_variant
from agent.zoo.stats import pack_hits
from model_zoo import data


def rescore(zoo: Path, threads: int) -> Manifest:
    """The zoo's manifest with `test_hits` on every test figure. Raises SystemExit on a zoo
    built from operator data (its test images are not regenerable) or on a figure mismatch."""
    manifest = load_manifest(zoo / MANIFEST_NAME)
    config = manifest.build.config if manifest.build else {}
    if config.get("data_dir") or "test_size" not in config:
        raise SystemExit(f"{zoo}: not a synthetic build; rebuild it to record per-image outcomes")
    images, labels = data.generate(
        "test", int(str(config["test_size"])), seed=int(str(config["seed"])), size=int(str(config["image_size"]))
    )
    inputs = {v.resolution: batch_inputs(images, v.resolution) for v in manifest.variants}
    jobs = [(v, p.budget) for v in manifest.variants for p in v.accuracy]
    sessions = {v.name: open_variant(zoo, v, SessionSettings(intra_threads=1)) for v in manifest.variants}

    def score(job: tuple[Variant, float]) -> np.ndarray:
        variant, budget = job
        return correct_mask(sessions[variant.name], inputs[variant.resolution], labels, budget)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        outcomes = list(pool.map(score, jobs))
    by_config = {(v.name, b): hits for (v, b), hits in zip(jobs, outcomes, strict=True)}
    wrong = [
        f"{v.name}@{p.budget:g}: manifest {p.test:.4f}, scored {by_config[(v.name, p.budget)].mean():.4f}"
        for v in manifest.variants
        for p in v.accuracy
        if abs(float(by_config[(v.name, p.budget)].mean()) - p.test) > 1e-9
    ]
    if wrong:
        raise SystemExit(f"{zoo}: figures differ from the manifest, nothing written: " + "; ".join(wrong))
    variants = [
        v.model_copy(
            update={
                "accuracy": [
                    p.model_copy(update={"test_hits": pack_hits(by_config[(v.name, p.budget)])}) for p in v.accuracy
                ]
            }
        )
        for v in manifest.variants
    ]
    return manifest.model_copy(update={"variants": variants})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=default_zoo_dir())
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="configurations scored at once")
    args = ap.parse_args(argv)
    manifest = rescore(args.zoo, args.threads)
    # Replaced whole: a reader (or a crash) sees the old manifest or the new one.
    write_atomic(args.zoo / MANIFEST_NAME, (manifest.model_dump_json(indent=2) + "\n").encode(), 0o644)
    points = sum(len(v.accuracy) for v in manifest.variants)
    print(f"{args.zoo / MANIFEST_NAME}: per-image outcomes of {points} test figures written", file=sys.stderr)


if __name__ == "__main__":
    main()
