"""The accuracy/latency frontier of every variant x token budget.

Latency: single-image calls at 2 ORT threads (and 1), interleaved round-robin over every
configuration in one run, so that machine drift hits all alike. Accuracy: the synthetic test
and shifted splits through onnxruntime. Writes bench/results/zoo.{json,md,png}.

    python -m bench.zoo [--count 1500] [--rounds 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.evaluation import accuracy, batch_inputs
from agent.manifest import load_manifest
from agent.zoo import MANIFEST_NAME, SessionSettings, default_zoo_dir, open_zoo
from bench.common import RESULTS, header, md_table, write_results
from model_zoo import data

TARGETS = {  # (variant, budget): (max latency ratio to full@1.0, max test accuracy loss in points)
    ("full", 0.5): (0.70, 1.5),
    ("int8", 1.0): (0.80, 1.0),
    ("pruned", 1.0): (0.65, 2.0),
    ("lowres", 1.0): (0.50, 3.0),
}


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both latency (lower) and accuracy (higher)."""
    front = []
    for name, lat, acc in points:
        dominated = any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for n2, l2, a2 in points if n2 != name)
        if not dominated:
            front.append(name)
    return front


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=default_zoo_dir())
    ap.add_argument("--count", type=int, default=1500, help="images per split (the manifest uses 1500)")
    ap.add_argument("--rounds", type=int, default=200, help="timed calls per configuration and thread count")
    args = ap.parse_args()
    manifest = load_manifest(args.zoo / MANIFEST_NAME)
    seed = manifest.build.seed if manifest.build else 0
    zoos = {t: open_zoo(args.zoo, SessionSettings(intra_threads=t)) for t in (1, 2)}
    configs = [(name, b) for name, v in zoos[2].variants.items() for b in v.spec.budgets]
    rng = np.random.default_rng(0)
    inputs = {
        n: rng.random((1, 3, v.spec.resolution, v.spec.resolution), dtype=np.float32)
        for n, v in zoos[2].variants.items()
    }

    times: dict[tuple[str, float, int], list[float]] = {(n, b, t): [] for n, b in configs for t in (1, 2)}
    for t in (1, 2):
        for n, b in configs:
            for _ in range(5):
                zoos[t].variants[n].run(inputs[n], b)
    started = time.monotonic()
    for _ in range(args.rounds):
        for t in (2, 1):
            for n, b in configs:
                v = zoos[t].variants[n]
                s = time.perf_counter()
                v.run(inputs[n], b)
                times[(n, b, t)].append((time.perf_counter() - s) * 1000)
    lat_s = time.monotonic() - started
    print(
        f"latency: {args.rounds} interleaved rounds of {len(configs)} configurations x 2 thread counts in {lat_s:.0f} s"
    )

    splits = {s: data.generate(s, args.count, seed=seed) for s in ("test", "shifted")}
    acc: dict[tuple[str, float], dict[str, float]] = {}
    for split, (imgs, labels) in splits.items():
        for res in sorted({v.spec.resolution for v in zoos[2].variants.values()}):
            x = batch_inputs(imgs, res)
            for n, b in configs:
                if zoos[2].variants[n].spec.resolution == res:
                    acc.setdefault((n, b), {})[split] = accuracy(zoos[2].variants[n], x, labels, b)

    base = float(np.median(times[("full", 1.0, 2)]))
    base_acc = acc[("full", 1.0)]["test"]
    rows: list[dict[str, Any]] = []
    for n, b in configs:
        p50 = float(np.median(times[(n, b, 2)]))
        rows.append(
            {
                "config": f"{n}@{b:g}",
                "variant": n,
                "budget": b,
                "p50_ms_2t": round(p50, 3),
                "p95_ms_2t": round(float(np.percentile(times[(n, b, 2)], 95)), 3),
                "p50_ms_1t": round(float(np.median(times[(n, b, 1)])), 3),
                "ratio_2t": round(p50 / base, 3),
                "acc_test": acc[(n, b)]["test"],
                "acc_shifted": acc[(n, b)]["shifted"],
                "loss_test_pt": round((base_acc - acc[(n, b)]["test"]) * 100, 2),
            }
        )
    front = pareto([(r["config"], r["p50_ms_2t"], r["acc_shifted"]) for r in rows])
    front_test = pareto([(r["config"], r["p50_ms_2t"], r["acc_test"]) for r in rows])
    cheapest = min(rows, key=lambda r: r["p50_ms_2t"])
    best = max(rows, key=lambda r: r["acc_shifted"])
    checks = []
    for (n, b), (max_ratio, max_loss) in TARGETS.items():
        r = next(r for r in rows if r["variant"] == n and r["budget"] == b)
        checks.append(
            {
                "config": r["config"],
                "ratio": r["ratio_2t"],
                "max_ratio": max_ratio,
                "loss_pt": r["loss_test_pt"],
                "max_loss_pt": max_loss,
                "met": r["ratio_2t"] <= max_ratio and r["loss_test_pt"] <= max_loss,
            }
        )
    spread = round((best["acc_shifted"] - cheapest["acc_shifted"]) * 100, 2)
    payload = {
        **header(),
        "count_per_split": args.count,
        "rounds": args.rounds,
        "seed": seed,
        "baseline": {"config": "full@1", "p50_ms_2t": round(base, 3), "acc_test": base_acc},
        "rows": rows,
        "pareto_shifted": front,
        "pareto_test": front_test,
        "shifted_spread_pt": {"best": best["config"], "cheapest": cheapest["config"], "points": spread},
        "targets": checks,
    }
    table = md_table(
        [
            "config",
            "p50 ms (2t)",
            "p95 ms (2t)",
            "p50 ms (1t)",
            "ratio to full@1",
            "test acc",
            "shifted acc",
            "test loss (pt)",
            "Pareto (shifted)",
        ],
        [
            [
                r["config"],
                r["p50_ms_2t"],
                r["p95_ms_2t"],
                r["p50_ms_1t"],
                r["ratio_2t"],
                f"{r['acc_test']:.1%}",
                f"{r['acc_shifted']:.1%}",
                r["loss_test_pt"],
                "yes" if r["config"] in front else "",
            ]
            for r in rows
        ],
    )
    targets = md_table(
        ["config", "latency ratio", "target", "test loss (pt)", "target", "met"],
        [
            [
                c["config"],
                c["ratio"],
                f"<= {c['max_ratio']}",
                c["loss_pt"],
                f"<= {c['max_loss_pt']}",
                "yes" if c["met"] else "NO",
            ]
            for c in checks
        ],
    )
    md = (
        f"# Zoo frontier\n\n{payload['machine']}, {payload['date']}; {args.count} images per split, "
        f"{args.rounds} interleaved timing rounds.\n\n{table}\n"
        f"Pareto frontier on the shifted split: {len(front)} configurations ({', '.join(front)}).\n"
        f"Most accurate on shifted ({best['config']}) beats the cheapest ({cheapest['config']}) by {spread} points.\n\n"
        f"## Targets (ratio to full@1.0, measured side by side)\n\n{targets}"
    )
    json_path, md_path = write_results("zoo", payload, md)
    plot(rows, front, RESULTS / "zoo.png")
    print(md)
    print(f"wrote {json_path}, {md_path}, {RESULTS / 'zoo.png'}")


def plot(rows: list[dict], front: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharex=True)
    colors: dict[str, str] = {}
    for ax, split in zip(axes, ("acc_test", "acc_shifted"), strict=True):
        for r in rows:
            c = colors.setdefault(r["variant"], f"C{len(colors)}")
            ax.scatter(
                r["p50_ms_2t"],
                r[split] * 100,
                color=c,
                s=18 + 40 * r["budget"],
                label=r["variant"] if r["budget"] == 1.0 else None,
            )
            ax.annotate(
                f"{r['budget']:g}",
                (r["p50_ms_2t"], r[split] * 100),
                fontsize=7,
                xytext=(3, 2),
                textcoords="offset points",
            )
        if split == "acc_shifted":
            pts = sorted((r["p50_ms_2t"], r[split] * 100) for r in rows if r["config"] in front)
            ax.plot(*zip(*pts, strict=True), "k--", lw=1, label="Pareto frontier")
        ax.set_title(f"{'test' if split == 'acc_test' else 'shifted'} split")
        ax.set_xlabel("p50 latency, ms (onnxruntime, 2 threads)")
        ax.set_ylabel("accuracy, %")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("edge-agent zoo: accuracy vs latency per variant x token budget (marker label = budget)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
