"""Confidence intervals and paired tests reported in the manifest, zoo info and bench/zoo."""

from __future__ import annotations

import math

import numpy as np

from agent.zoo.stats import format_p, mcnemar_exact, pack_hits, unpack_hits, wilson_interval


def test_wilson_interval_matches_the_closed_form_and_stays_in_0_1() -> None:
    low, high = wilson_interval(940, 1000)
    assert math.isclose(low, 0.92353, abs_tol=1e-4) and math.isclose(high, 0.95310, abs_tol=1e-4)
    assert wilson_interval(0, 50)[0] == 0.0 and math.isclose(wilson_interval(0, 50)[1], 0.07135, abs_tol=1e-4)
    assert math.isclose(wilson_interval(50, 50)[1], 1.0) and math.isclose(
        wilson_interval(50, 50)[0], 0.92865, abs_tol=1e-4
    )


def test_mcnemar_exact_is_the_doubled_binomial_tail_of_the_discordant_images() -> None:
    both = [True] * 100
    a = np.array(both + [True] * 9 + [False] * 2)
    b = np.array(both + [False] * 9 + [True] * 2)
    expected = 2 * sum(math.comb(11, i) for i in range(3)) / 2**11
    assert math.isclose(mcnemar_exact(a, b), expected, rel_tol=1e-9)
    assert mcnemar_exact(a, b) == mcnemar_exact(b, a)
    assert mcnemar_exact(a, a) == 1.0


def test_a_large_paired_difference_is_significant_and_a_tie_is_not() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(4000) < 0.9
    b = a.copy()
    b[np.flatnonzero(a)[:60]] = False  # 60 images only `a` gets right
    assert mcnemar_exact(a, b) < 1e-10
    c = a.copy()
    c[np.flatnonzero(a)[:5]] = False
    c[np.flatnonzero(~a)[:5]] = True  # 5 each way
    assert mcnemar_exact(a, c) == 1.0


def test_format_p() -> None:
    assert (format_p(None), format_p(0.0004), format_p(0.0328)) == ("-", "<0.001", "0.033")


def test_outcomes_round_trip_through_their_packed_form() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 7, 8, 9, 4000):
        hits = rng.random(n) < 0.9
        assert np.array_equal(unpack_hits(pack_hits(hits), n), hits)


def test_packed_outcomes_for_another_image_count_are_refused() -> None:
    packed = pack_hits(np.ones(4000, dtype=bool))
    for n in (3992, 4009):
        try:
            unpack_hits(packed, n)
        except ValueError as exc:
            assert "images" in str(exc)
        else:
            raise AssertionError(f"{n} images accepted")
