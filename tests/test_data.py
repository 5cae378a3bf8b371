"""The synthetic data generator: fixed splits, and a shifted split with finer defects."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from model_zoo import data


def test_an_image_is_a_pure_function_of_seed_split_and_index() -> None:
    a, b = data.sample(0, "test", 7), data.sample(0, "test", 7)
    assert np.array_equal(a.image, b.image) and a.label == b.label
    assert not np.array_equal(a.image, data.sample(0, "shifted", 7).image)
    assert not np.array_equal(a.image, data.sample(1, "test", 7).image)


@pytest.mark.parametrize("cls", [c for c in data.CLASSES if c != "ok"])
def test_a_smaller_defect_scale_draws_a_smaller_defect(cls: str) -> None:
    flat = np.full((128, 128), 0.5, dtype=np.float32)

    def area(scale: float) -> int:
        rng = np.random.default_rng(3)  # the same shape and place at both scales
        drawn = data._defect(rng, cls, flat, 128, 0.4, scale)
        return int((np.abs(drawn - flat) > 0.05).sum())

    low, _ = data.SHIFTED_DEFECT_SCALE
    assert 0 < area(low) < area(1.0)


def test_only_the_shifted_split_draws_finer_defects(monkeypatch: pytest.MonkeyPatch) -> None:
    draw = data._defect
    drawn: list[float] = []

    def recording(*args: Any) -> data.Float:
        drawn.append(args[-1])
        return draw(*args)

    monkeypatch.setattr(data, "_defect", recording)

    def scales(split: str) -> list[float]:
        drawn.clear()
        data.generate(split, 2 * len(data.CLASSES), size=32)
        return list(drawn)

    low, high = data.SHIFTED_DEFECT_SCALE
    assert set(scales("train")) == set(scales("test")) == {1.0}
    shifted = scales("shifted")
    assert len(shifted) == 2 * len(data.CLASSES) and all(low <= s <= high for s in shifted) and min(shifted) < 0.9


def test_a_split_drawn_in_two_processes_is_the_same_split() -> None:
    count = 2 * data.MIN_IMAGES_PER_WORKER
    one = data.generate("val", count, seed=3, size=32)
    two = data.generate("val", count, seed=3, size=32, workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
