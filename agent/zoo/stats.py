"""Confidence intervals and paired tests for accuracy figures.

A 1-point difference on a few thousand images can be noise; the manifest, `zoo info` and
bench/zoo report each accuracy with its 95% interval and test neighbouring configurations
on the same images (paired), so that an operator can tell a real step from a wobble.
"""

from __future__ import annotations

import base64
import math

import numpy as np
from numpy.typing import NDArray

Z95 = 1.959964


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion: sound near 0 and 1, unlike the normal one."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(a_correct: NDArray[np.bool_], b_correct: NDArray[np.bool_]) -> float:
    """Two-sided exact McNemar p-value of two classifiers scored on the same images: a
    binomial test on the images exactly one of them gets right."""
    if a_correct.shape != b_correct.shape:
        raise ValueError("paired test needs the same images for both")
    only_a = int(np.sum(a_correct & ~b_correct))
    only_b = int(np.sum(b_correct & ~a_correct))
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    # P(X <= k) for X ~ Bin(n, 1/2), doubled; in log space so that n in the thousands is fine.
    log_half_n = -n * math.log(2)
    tail = sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n) for i in range(k + 1)
    )
    return min(1.0, 2 * tail)


def format_p(p: float | None) -> str:
    """A p-value for a table: '-' when there is none, '<0.001' below that."""
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def pack_hits(hits: NDArray[np.bool_]) -> str:
    """Per-image outcomes (right/wrong) as base64 of their packed bits: 4,000 test images take
    668 characters, so the manifest can keep every configuration's and any two can be tested
    paired, not only the neighbours the build compared."""
    return base64.b64encode(np.packbits(hits.astype(bool)).tobytes()).decode("ascii")


def unpack_hits(text: str, n: int) -> NDArray[np.bool_]:
    """The outcomes `pack_hits` wrote for `n` images. Raises ValueError when they do not fit."""
    raw = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"{len(raw)} bytes of outcomes for {n} images")
    return np.unpackbits(raw)[:n].astype(bool)
