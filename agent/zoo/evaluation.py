"""Accuracy of a variant at a budget, and its latency profile on this device."""

from __future__ import annotations

import platform
import time
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from agent.zoo.manifest import LatencyPoint, LatencyProfile
from agent.zoo.preprocess import image_to_input
from agent.zoo.sessions import LoadedVariant


def batch_inputs(images: NDArray[np.uint8], size: int, resize: str = "bilinear") -> NDArray[np.float32]:
    """(N, H, W, 3) uint8 images through the same preprocessing the daemon uses."""
    return np.concatenate([image_to_input(img, size, resize) for img in images])


def correct_mask(
    variant: LoadedVariant, inputs: NDArray[np.float32], labels: NDArray[np.int64], budget: float, batch: int = 8
) -> NDArray[np.bool_]:
    """Per image, whether the variant at `budget` labels it right (for paired tests). Small
    batches: at 50 images the attention maps outgrow the cache and full@1 took 14.3 ms an
    image against 11.9 at 4."""
    hits = np.empty(len(inputs), dtype=bool)
    for start in range(0, len(inputs), batch):
        pred = variant.run(inputs[start : start + batch], budget)
        hits[start : start + batch] = pred.probs.argmax(axis=1) == labels[start : start + batch]
    return hits


def accuracy(
    variant: LoadedVariant, inputs: NDArray[np.float32], labels: NDArray[np.int64], budget: float, batch: int = 8
) -> float:
    return float(correct_mask(variant, inputs, labels, budget, batch).mean())


def machine_description() -> str:
    import os

    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, onnxruntime {onnxruntime.__version__}"


def time_runs(
    variant: LoadedVariant, image: NDArray[np.float32], budget: float, runs: int, warmup: int = 5
) -> list[float]:
    """Wall time in ms of `runs` single-image calls after `warmup` untimed ones."""
    for _ in range(warmup):
        variant.run(image, budget)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        variant.run(image, budget)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def profile_variants(
    variants: dict[int, list[LoadedVariant]], budgets: dict[str, tuple[float, ...]], runs: int
) -> dict[str, LatencyProfile]:
    """Latency p50/p95 per variant x budget x thread count; calls are interleaved round-robin
    so that drift in machine load is shared by every configuration alike."""
    samples: dict[tuple[str, float, int], list[float]] = {}
    rng = np.random.default_rng(0)
    for threads, loaded in variants.items():
        images = {v.name: rng.random((1, 3, v.spec.resolution, v.spec.resolution), dtype=np.float32) for v in loaded}
        for v in loaded:
            for b in budgets[v.name]:
                time_runs(v, images[v.name], b, runs=0, warmup=5)
        for _ in range(runs):
            for v in loaded:
                for b in budgets[v.name]:
                    samples.setdefault((v.name, b, threads), []).extend(time_runs(v, images[v.name], b, 1, 0))
    now = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_description()
    profiles: dict[str, list[LatencyPoint]] = {}
    for (name, budget, threads), times in samples.items():
        profiles.setdefault(name, []).append(
            LatencyPoint(
                budget=budget,
                threads=threads,
                p50_ms=round(float(np.percentile(times, 50)), 4),
                p95_ms=round(float(np.percentile(times, 95)), 4),
            )
        )
    return {name: LatencyProfile(machine=machine, measured_at=now, points=pts) for name, pts in profiles.items()}
