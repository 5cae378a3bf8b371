"""Labelled sample images for tests that check a label end to end.

The shipped zoo is 92% accurate on `test`, so an arbitrary test image can be misclassified
(scratch #0 is called crazing by full@1). Tests that assert "the daemon says scratch" take the
first test image of the class that every configuration of the shipped zoo labels right in
process: the daemon must then say the same, whatever configuration it serves."""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image

from agent.paths import default_zoo_dir
from agent.values import BUDGETS
from agent.zoo.preprocess import image_to_input
from agent.zoo.sessions import SessionSettings, open_zoo
from model_zoo import data

#: How far into the test split to look; a class the zoo misses this often is a broken zoo.
SEARCH = 40


@functools.cache
def agreed_index(name: str) -> int:
    """Index in the test split of the first image of class `name` that every configuration
    of the shipped zoo labels `name`."""
    label = data.CLASSES.index(name)
    zoo = open_zoo(default_zoo_dir(), SessionSettings(intra_threads=1))
    for i in range(SEARCH):
        index = label + i * len(data.CLASSES)
        s = data.sample(0, "test", index)
        assert s.label == label
        image = Image.fromarray(s.image)
        if all(
            zoo.manifest.classes[int(v.run(image_to_input(image, v.spec.resolution), b).probs.argmax())] == name
            for v in zoo.variants.values()
            for b in BUDGETS
        ):
            return index
    raise AssertionError(
        f"no {name} image in the first {SEARCH} of the test split that every configuration labels right"
    )


def agreed_png(out: Path, name: str = "scratch") -> Path:
    """Write that image as PNG into `out` and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    Image.fromarray(data.sample(0, "test", agreed_index(name)).image).save(path)
    return path
