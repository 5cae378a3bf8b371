"""The accuracy/latency frontier of every variant x token budget.

Latency: single-image calls at 2 ORT threads (and 1), interleaved round-robin over every
configuration in one run, so that machine drift hits all alike. Accuracy: the synthetic test
and shifted splits through onnxruntime, with 95% Wilson intervals and exact McNemar tests
between neighbouring configurations on the same images. Writes bench/results/zoo.{json,md,png}.

    python -m bench.zoo [--test-count 4000] [--shifted-count 1500] [--rounds 200]
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.paths import default_zoo_dir
from agent.zoo.evaluation import batch_inputs, correct_mask
from agent.zoo.manifest import MANIFEST_NAME, load_manifest
from agent.zoo.sessions import SessionSettings, Zoo, open_zoo
from agent.zoo.stats import format_p, mcnemar_exact, wilson_interval
from bench.common import RESULTS, header, md_table, write_results
from model_zoo import data

#: Latency ratio to full@1 (2 threads, p50), at most.
RATIO_TARGETS = {("full", 0.5): 0.70, ("int8", 1.0): 0.80, ("pruned", 1.0): 0.65, ("lowres", 1.0): 0.50}
#: Test accuracy below full@1 in points, (at least, at most).
LOSS_TARGETS = {
    ("full", 0.7): (0.3, 1.5),
    ("full", 0.5): (1.0, 3.0),
    ("full", 0.25): (3.0, 8.0),
    ("pruned", 1.0): (1.0, 4.0),
    ("lowres", 1.0): (3.0, 10.0),
}
#: Paired differences from full@1 that must be significant.
SIGNIFICANT = (("full", 0.5), ("full", 0.25))
FULL_RANGE = (0.90, 0.97)
FRONTIER_MIN = (8, 6.0, 4.0)  # configurations, accuracy span in points, latency span (x)
INT8_MAX_LOSS_PT = 1.0


@dataclass
class Row:
    variant: str
    budget: float
    times_2t: list[float]
    times_1t: list[float]
    hits: NDArray[np.bool_]  # per test image
    shifted: float

    @property
    def config(self) -> str:
        return f"{self.variant}@{self.budget:g}"

    @property
    def p50(self) -> float:
        return float(np.median(self.times_2t))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.times_2t, 95))

    @property
    def test(self) -> float:
        return float(self.hits.mean())


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both latency (lower) and accuracy (higher)."""
    front = []
    for name, lat, acc in points:
        dominated = any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for n2, l2, a2 in points if n2 != name)
        if not dominated:
            front.append(name)
    return front


def measure_latency(
    zoos: dict[int, Zoo], configs: list[tuple[str, float]], rounds: int
) -> dict[tuple[str, float, int], list[float]]:
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
    for _ in range(rounds):
        for t in (2, 1):
            for n, b in configs:
                v = zoos[t].variants[n]
                s = time.perf_counter()
                v.run(inputs[n], b)
                times[(n, b, t)].append((time.perf_counter() - s) * 1000)
    return times


def measure_accuracy(
    zoo: Zoo, configs: list[tuple[str, float]], seed: int, counts: dict[str, int]
) -> dict[tuple[str, float], tuple[NDArray[np.bool_], float]]:
    out: dict[tuple[str, float], tuple[NDArray[np.bool_], float]] = {}
    hits: dict[str, dict[tuple[str, float], NDArray[np.bool_]]] = {}
    for split, count in counts.items():
        imgs, labels = data.generate(split, count, seed=seed)
        for res in sorted({v.spec.resolution for v in zoo.variants.values()}):
            x = batch_inputs(imgs, res)
            for n, b in configs:
                if zoo.variants[n].spec.resolution == res:
                    hits.setdefault(split, {})[(n, b)] = correct_mask(zoo.variants[n], x, labels, b)
    for key in configs:
        out[key] = (hits["test"][key], float(hits["shifted"][key].mean()))
    return out


def checks(rows: dict[str, Row], front: list[str]) -> list[dict[str, Any]]:
    """Every must-show target, measured: what, figure, target, met."""
    base = rows["full@1"]
    out: list[dict[str, Any]] = []

    def add(what: str, figure: float | str, target: str, met: bool) -> None:
        out.append({"check": what, "figure": figure, "target": target, "met": bool(met)})

    add(
        "full@1 test accuracy",
        f"{base.test:.1%}",
        f"{FULL_RANGE[0]:.0%}-{FULL_RANGE[1]:.0%}",
        FULL_RANGE[0] <= base.test <= FULL_RANGE[1],
    )
    for (n, b), (low, high) in LOSS_TARGETS.items():
        r = rows[f"{n}@{b:g}"]
        loss = round((base.test - r.test) * 100, 2)
        add(f"{r.config} below full@1 (pt)", loss, f"{low}-{high}", low <= loss <= high)
    for n, b in SIGNIFICANT:
        r = rows[f"{n}@{b:g}"]
        p = mcnemar_exact(r.hits, base.hits)
        add(f"{r.config} vs full@1, paired McNemar p", f"{p:.2g}", "< 0.05", p < 0.05)
    full_budgets = sorted((r for r in rows.values() if r.variant == "full"), key=lambda r: -r.budget)
    monotone = all(a.test >= b.test for a, b in itertools.pairwise(full_budgets))
    add("full: accuracy falls with the budget", " > ".join(f"{r.test:.1%}" for r in full_budgets), "monotone", monotone)
    for int8_name, fp32_name in (("int8", "full"), ("int8-lowres", "lowres")):
        gaps = [
            abs(r.test - rows[f"{fp32_name}@{r.budget:g}"].test) * 100 for r in rows.values() if r.variant == int8_name
        ]
        if gaps:
            worst = round(max(gaps), 2)
            add(
                f"{int8_name} vs {fp32_name}, worst budget (pt)",
                worst,
                f"<= {INT8_MAX_LOSS_PT}",
                worst <= INT8_MAX_LOSS_PT,
            )
    for (n, b), max_ratio in RATIO_TARGETS.items():
        ratio = round(rows[f"{n}@{b:g}"].p50 / base.p50, 3)
        add(f"{n}@{b:g} latency / full@1 (p50, 2 threads)", ratio, f"<= {max_ratio}", ratio <= max_ratio)
    on = [rows[c] for c in front]
    acc_span = round((max(r.test for r in on) - min(r.test for r in on)) * 100, 2)
    lat_span = round(max(r.p95 for r in on) / min(r.p95 for r in on), 2)
    count, min_acc, min_lat = FRONTIER_MIN
    add("test Pareto frontier (accuracy vs p95): configurations", len(on), f">= {count}", len(on) >= count)
    add("test Pareto frontier accuracy span (pt)", acc_span, f">= {min_acc}", acc_span >= min_acc)
    add("test Pareto frontier latency span (x)", lat_span, f">= {min_lat}", lat_span >= min_lat)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=default_zoo_dir())
    ap.add_argument("--test-count", type=int, default=0, help="test images (default: the manifest's test size)")
    ap.add_argument("--shifted-count", type=int, default=0, help="shifted images (default: the manifest's)")
    ap.add_argument("--rounds", type=int, default=200, help="timed calls per configuration and thread count")
    args = ap.parse_args()
    manifest = load_manifest(args.zoo / MANIFEST_NAME)
    config = manifest.build.config if manifest.build else {}
    seed = manifest.build.seed if manifest.build else 0
    counts = {
        "test": args.test_count or int(str(config.get("test_size", 4000))),
        "shifted": args.shifted_count or int(str(config.get("shifted_size", 1500))),
    }
    zoos = {t: open_zoo(args.zoo, SessionSettings(intra_threads=t)) for t in (1, 2)}
    configs = [(name, b) for name, v in zoos[2].variants.items() for b in v.spec.budgets]
    started = time.monotonic()
    times = measure_latency(zoos, configs, args.rounds)
    print(
        f"latency: {args.rounds} interleaved rounds of {len(configs)} configurations x 2 thread counts in {time.monotonic() - started:.0f} s"
    )
    acc = measure_accuracy(zoos[2], configs, seed, counts)
    rows = {
        f"{n}@{b:g}": Row(n, b, times[(n, b, 2)], times[(n, b, 1)], acc[(n, b)][0], acc[(n, b)][1]) for n, b in configs
    }
    front = pareto([(r.config, r.p95, r.test) for r in rows.values()])
    front_rows = sorted((rows[c] for c in front), key=lambda r: r.p95)
    results = checks(rows, front)
    payload = {
        **header(),
        "counts": counts,
        "rounds": args.rounds,
        "seed": seed,
        "rows": [_row_json(r, rows) for r in rows.values()],
        "pareto_test": [r.config for r in front_rows],
        "pareto_shifted": pareto([(r.config, r.p95, r.shifted) for r in rows.values()]),
        "frontier_steps": _frontier_steps(front_rows),
        "checks": results,
    }
    md = _markdown(payload, rows, front_rows, results)
    json_path, md_path = write_results("zoo", payload, md)
    plot(payload["rows"], payload["pareto_test"], RESULTS / "zoo.png")
    print(md)
    print(f"wrote {json_path}, {md_path}, {RESULTS / 'zoo.png'}")


def _larger_budget(r: Row, rows: dict[str, Row]) -> Row | None:
    larger = [o for o in rows.values() if o.variant == r.variant and o.budget > r.budget]
    return min(larger, key=lambda o: o.budget) if larger else None


def _row_json(r: Row, rows: dict[str, Row]) -> dict[str, Any]:
    base, larger = rows["full@1"], _larger_budget(r, rows)
    low, high = wilson_interval(int(r.hits.sum()), len(r.hits))
    return {
        "config": r.config,
        "variant": r.variant,
        "budget": r.budget,
        "p50_ms_2t": round(r.p50, 3),
        "p95_ms_2t": round(r.p95, 3),
        "p50_ms_1t": round(float(np.median(r.times_1t)), 3),
        "ratio_2t": round(r.p50 / base.p50, 3),
        "acc_test": r.test,
        "acc_test_ci95": [round(low, 4), round(high, 4)],
        "acc_shifted": r.shifted,
        "loss_test_pt": round((base.test - r.test) * 100, 2),
        "p_vs_larger_budget": mcnemar_exact(r.hits, larger.hits) if larger else None,
        "p_vs_full": mcnemar_exact(r.hits, base.hits) if r is not base else None,
    }


def _frontier_steps(front: list[Row]) -> list[dict[str, Any]]:
    """Neighbours on the frontier (by p95): the accuracy step and its paired p-value."""
    return [
        {
            "from": a.config,
            "to": b.config,
            "gain_pt": round((b.test - a.test) * 100, 2),
            "p": mcnemar_exact(a.hits, b.hits),
        }
        for a, b in itertools.pairwise(front)
    ]


def _markdown(payload: dict[str, Any], rows: dict[str, Row], front: list[Row], results: list[dict[str, Any]]) -> str:
    by_config = {r["config"]: r for r in payload["rows"]}
    table = md_table(
        [
            "config",
            "p50 ms (2t)",
            "p95 ms (2t)",
            "p50 ms (1t)",
            "ratio",
            "test acc",
            "95% CI",
            "loss (pt)",
            "p vs larger budget",
            "shifted acc",
            "frontier",
        ],
        [
            [
                c,
                r["p50_ms_2t"],
                r["p95_ms_2t"],
                r["p50_ms_1t"],
                r["ratio_2t"],
                f"{r['acc_test']:.1%}",
                f"{r['acc_test_ci95'][0]:.1%}-{r['acc_test_ci95'][1]:.1%}",
                r["loss_test_pt"],
                format_p(r["p_vs_larger_budget"]),
                f"{r['acc_shifted']:.1%}",
                "yes" if c in payload["pareto_test"] else "",
            ]
            for c, r in by_config.items()
        ],
    )
    steps = md_table(
        ["from", "to", "accuracy gained (pt)", "paired p"],
        [[s["from"], s["to"], s["gain_pt"], format_p(s["p"])] for s in payload["frontier_steps"]],
    )
    targets = md_table(
        ["check", "measured", "target", "met"],
        [[c["check"], c["figure"], c["target"], "yes" if c["met"] else "NO"] for c in results],
    )
    counts = payload["counts"]
    return (
        f"# Zoo frontier\n\n{payload['machine']}, {payload['date']}; {counts['test']} test and {counts['shifted']} "
        f"shifted images (seed {payload['seed']}), {payload['rounds']} interleaved timing rounds.\n\n{table}\n"
        f"95% CI: Wilson interval. p: exact McNemar test on the same test images (paired).\n\n"
        f"## Test Pareto frontier (accuracy vs p95): {len(front)} configurations\n\n{steps}\n"
        f"## Targets (measured side by side in this run)\n\n{targets}"
    )


def plot(rows: list[dict[str, Any]], front: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharex=True)
    colors: dict[str, str] = {}
    for ax, split in zip(axes, ("acc_test", "acc_shifted"), strict=True):
        for r in rows:
            c = colors.setdefault(r["variant"], f"C{len(colors)}")
            y = r[split] * 100
            if split == "acc_test":
                low, high = r["acc_test_ci95"]
                ax.errorbar(r["p95_ms_2t"], y, yerr=[[y - low * 100], [high * 100 - y]], color=c, lw=0.8, capsize=2)
            ax.scatter(
                r["p95_ms_2t"], y, color=c, s=18 + 40 * r["budget"], label=r["variant"] if r["budget"] == 1.0 else None
            )
            ax.annotate(f"{r['budget']:g}", (r["p95_ms_2t"], y), fontsize=7, xytext=(3, 2), textcoords="offset points")
        if split == "acc_test":
            pts = sorted((r["p95_ms_2t"], r[split] * 100) for r in rows if r["config"] in front)
            ax.plot(*zip(*pts, strict=True), "k--", lw=1, label="Pareto frontier")
        ax.set_title(f"{'test' if split == 'acc_test' else 'shifted'} split")
        ax.set_xlabel("p95 latency, ms (onnxruntime, 2 threads)")
        ax.set_ylabel("accuracy, %")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("edge-agent zoo: accuracy vs latency per variant x token budget (label = budget; bars = 95% CI)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
