"""Does `edge-agent zoo build` reproduce the shipped zoo? Builds it again with the shipped
manifest's config and seed (or takes a finished build with --built) and compares, variant by
variant: identical ONNX files, and the accuracy on test and shifted at every budget (target:
within 0.5 point). Writes bench/results/zoo_reproduce.{json,md}.

    python -m bench.zoo_reproduce [--out build/zoo-reproduce] [--built DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.paths import default_zoo_dir
from agent.zoo.manifest import MANIFEST_NAME, Manifest, load_manifest
from bench.common import header, md_table, write_results

TOLERANCE_PT = 0.5


def compare(shipped: Manifest, built: Manifest) -> list[dict[str, Any]]:
    rows = []
    for a in shipped.variants:
        b = next((v for v in built.variants if v.name == a.name), None)
        if b is None:
            rows.append({"variant": a.name, "built": False})
            continue
        pairs: list[tuple[float | None, float | None]] = [
            (x.test, y.test) for x, y in zip(a.accuracy, b.accuracy, strict=True)
        ]
        pairs += [(x.shifted, y.shifted) for x, y in zip(a.accuracy, b.accuracy, strict=True)]
        diffs = [abs(p - q) * 100 for p, q in pairs if p is not None and q is not None]
        rows.append(
            {
                "variant": a.name,
                "built": True,
                "identical_file": a.sha256 == b.sha256,
                "max_diff_pt": round(max(diffs), 3),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/zoo-reproduce"), help="where to build")
    ap.add_argument("--built", type=Path, help="compare this finished build instead of building")
    args = ap.parse_args()
    shipped_dir = default_zoo_dir()
    built_dir = args.built or args.out
    if args.built is None:
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "agent", "zoo", "build", "--out", str(args.out)], check=True)
        print(f"built in {time.monotonic() - started:.0f} s")
    shipped, built = load_manifest(shipped_dir / MANIFEST_NAME), load_manifest(built_dir / MANIFEST_NAME)
    rows = compare(shipped, built)
    worst = max((r["max_diff_pt"] for r in rows if r["built"]), default=None)
    ok = all(r["built"] for r in rows) and worst is not None and worst <= TOLERANCE_PT
    payload = {
        **header(),
        "seed": built.build.seed if built.build else None,
        "shipped_build_s": shipped.build.duration_s if shipped.build else None,
        "rebuild_s": built.build.duration_s if built.build else None,
        "variants": rows,
        "worst_diff_pt": worst,
        "within_tolerance": ok,
    }
    md = (
        f"# Zoo reproduction\n\n{payload['machine']}, {payload['date']}; seed {payload['seed']}; shipped zoo built in "
        f"{payload['shipped_build_s']} s, rebuilt in {payload['rebuild_s']} s (target: 45 min on 2 cores).\n\n"
        + md_table(
            ["variant", "identical ONNX file", "largest accuracy difference (pt, test and shifted, every budget)"],
            [[r["variant"], r.get("identical_file", "not built"), r.get("max_diff_pt", "-")] for r in rows],
        )
        + f"\nWorst difference {worst} pt (target <= {TOLERANCE_PT:g}): {'PASS' if ok else 'MISS'}.\n"
    )
    write_results("zoo_reproduce", payload, md)
    print(md)


if __name__ == "__main__":
    main()
