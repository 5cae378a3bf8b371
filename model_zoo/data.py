"""Deterministic generator of synthetic industrial surface images.

The shipped zoo is trained on *synthetic* data: textured metal, fabric, cast and painted
surfaces with defects modelled on real surface-inspection sets (NEU steel surface defects,
MVTec textures). Some classes spread their evidence over much of the image (crazing, pitted
surface, rolled-in scale, patches), so that a model which keeps fewer tokens loses evidence;
others need fine detail to tell from harmless nuisances (a hairline scratch from a loose
fibre, a poke from a speck of dust), so that input resolution matters. Dust and fibres lie on
parts of every class, `ok` included: they are not defects.

Every image is a pure function of (seed, split, index), so splits are fixed and any image can
be regenerated without storing it. The `shifted` split uses other lighting, sensor noise,
blur, texture scales and finer defects, to measure robustness.
"""

from __future__ import annotations

import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

CLASSES: tuple[str, ...] = (
    "ok",
    "scratch",
    "crazing",
    "pitted",
    "rolled_in_scale",
    "patches",
    "inclusion",
    "poke",
)
SURFACES: tuple[str, ...] = ("brushed_metal", "fabric", "cast", "painted")
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2, "shifted": 3}
# Defects on `shifted` are up to a quarter smaller than in training (a finer process, a new
# batch): hairline scratches and pinholes are where input resolution and token budget show.
SHIFTED_DEFECT_SCALE: tuple[float, float] = (0.75, 1.0)

Float = NDArray[np.float32]
Point = NDArray[np.float64]


@dataclass(frozen=True)
class Sample:
    image: NDArray[np.uint8]  # HxWx3
    label: int
    surface: str


def _grid(size: int) -> tuple[Float, Float]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


def _upsampled_noise(rng: np.random.Generator, size: int, cells: tuple[int, int]) -> Float:
    small = rng.random(cells, dtype=np.float32)
    img = Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _surface(rng: np.random.Generator, kind: str, size: int, shifted: bool) -> Float:
    """Grayscale texture in roughly [0, 1]."""
    scale = rng.uniform(1.3, 1.8) if shifted else 1.0
    if kind == "brushed_metal":
        streaks = _upsampled_noise(rng, size, (int(size / scale), max(2, int(6 / scale))))
        base = 0.55 + 0.25 * (streaks - 0.5) + 0.04 * rng.standard_normal((size, size))
    elif kind == "fabric":
        period = rng.uniform(5.0, 8.0) * scale
        yy, xx = _grid(size)
        weave = np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
        base = 0.5 + 0.12 * weave + 0.05 * rng.standard_normal((size, size))
    elif kind == "cast":
        blotch = _upsampled_noise(rng, size, (max(2, int(8 / scale)),) * 2)
        grain = 0.06 * rng.standard_normal((size, size))
        base = 0.45 + 0.3 * (blotch - 0.5) + grain
    else:  # painted
        blotch = _upsampled_noise(rng, size, (3, 3))
        base = 0.6 + 0.12 * (blotch - 0.5) + 0.015 * rng.standard_normal((size, size))
    return base.astype(np.float32)


def _segment_distance(size: int, p0: Point, p1: Point) -> Float:
    yy, xx = _grid(size)
    d = p1 - p0
    length2 = float(d @ d) or 1e-6
    t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / length2, 0.0, 1.0)
    return np.hypot(xx - (p0[0] + t * d[0]), yy - (p0[1] + t * d[1])).astype(np.float32)


def _stroke(size: int, points: Point, width: float) -> Float:
    """Anti-aliased coverage in [0, 1] of a polyline."""
    dist = np.full((size, size), np.inf, dtype=np.float32)
    for a, b in itertools.pairwise(points):
        dist = np.minimum(dist, _segment_distance(size, a, b))
    return np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)


def _dots(size: int, centres: Point, radii: NDArray[np.float64], soft: float = 0.6) -> Float:
    """Anti-aliased coverage of many small discs, each drawn in its own window only."""
    cover = np.zeros((size, size), dtype=np.float32)
    for (cx, cy), r in zip(centres, radii, strict=True):
        x0, x1 = max(0, int(cx - r - 2)), min(size, int(cx + r + 3))
        y0, y1 = max(0, int(cy - r - 2)), min(size, int(cy + r + 3))
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        d = np.hypot(xx - cx, yy - cy)
        cover[y0:y1, x0:x1] = np.maximum(cover[y0:y1, x0:x1], np.clip((r - d) / soft + 0.5, 0.0, 1.0))
    return cover


def _ellipse(size: int, centre: Point, rx: float, ry: float, angle: float, soft: float) -> Float:
    yy, xx = _grid(size)
    c, s = np.cos(angle), np.sin(angle)
    u = ((xx - centre[0]) * c + (yy - centre[1]) * s) / rx
    v = (-(xx - centre[0]) * s + (yy - centre[1]) * c) / ry
    return np.clip((1.0 - np.hypot(u, v)) / soft + 0.5, 0.0, 1.0).astype(np.float32)


def _walk(rng: np.random.Generator, start: Point, steps: int, step: float, turn: float) -> Point:
    """A polyline that turns by up to `turn` radians at each of `steps` steps."""
    points = [start]
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(steps):
        angle += rng.uniform(-turn, turn)
        points.append(points[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    return np.stack(points)


def _region(rng: np.random.Generator, size: int, low: float, high: float) -> tuple[Point, float]:
    """Centre and radius of an area covering a share `low`-`high` of the image's width."""
    radius = rng.uniform(low, high) * size / 2
    centre = rng.uniform(size * 0.3, size * 0.7, 2)
    return centre, radius


def _points_in(rng: np.random.Generator, centre: Point, radius: float, count: int) -> Point:
    r = radius * np.sqrt(rng.random(count))
    a = rng.uniform(0, 2 * np.pi, count)
    return centre + np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _scratch(rng: np.random.Generator, img: Float, size: int, contrast: float, s: float) -> Float:
    """A hairline cut through the finish: straight, bright where it catches the light, a faint
    shadow along one side."""
    centre = rng.uniform(24 * s, size - 24 * s, 2)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(24, 56) * s
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    bend = rng.uniform(-1.5, 1.5) * s * normal
    p0, p1 = centre - direction * length / 2, centre + direction * length / 2
    pts = np.stack([p0, (p0 + p1) / 2 + bend, p1])
    width = rng.uniform(0.8, 1.3) * s
    line = _stroke(size, pts, width)
    shadow = _stroke(size, pts + normal * (width + 0.6), 0.7 * s)
    return img + contrast * 0.9 * line - contrast * 0.4 * shadow


def _crazing(rng: np.random.Generator, img: Float, size: int, contrast: float, s: float) -> Float:
    """A network of fine cracks (cell boundaries) over a large part of the surface."""
    centre, radius = _region(rng, size, 0.6, 1.1)
    cells = int(rng.integers(14, 28))
    seeds = _points_in(rng, centre, radius * 1.2, cells)
    yy, xx = _grid(size)
    d = np.hypot(xx[..., None] - seeds[:, 0], yy[..., None] - seeds[:, 1])
    d.sort(axis=-1)
    width = rng.uniform(0.6, 1.0) * s
    lines = np.clip(width / 2 + 0.5 - (d[..., 1] - d[..., 0]) / 2, 0.0, 1.0)
    # Some boundaries are open: the network is broken in places, and fades out at its edge.
    broken = _upsampled_noise(rng, size, (10, 10)) > rng.uniform(0.2, 0.45)
    area = _ellipse(size, centre, radius, radius, 0.0, soft=0.5)
    return (img - contrast * rng.uniform(0.45, 0.7) * lines * broken * area).astype(np.float32)


def _pitted(rng: np.random.Generator, img: Float, size: int, contrast: float, s: float) -> Float:
    """Many small dark pits scattered over an area (NEU pitted surface)."""
    centre, radius = _region(rng, size, 0.4, 0.9)
    count = int(rng.integers(14, 36))
    pits = _points_in(rng, centre, radius, count)
    radii = rng.uniform(0.7, 1.4, count) * s
    return img - contrast * rng.uniform(0.7, 1.0) * _dots(size, pits, radii, soft=0.5)


def _rolled_in_scale(rng: np.random.Generator, img: Float, size: int, contrast: float, s: float) -> Float:
    """Dark flakes of oxide rolled into the surface, aligned with the rolling direction."""
    centre, radius = _region(rng, size, 0.5, 1.0)
    angle = rng.choice([0.0, np.pi / 2]) + rng.uniform(-0.15, 0.15)
    count = int(rng.integers(7, 16))
    cover = np.zeros((size, size), dtype=np.float32)
    for c in _points_in(rng, centre, radius, count):
        rx, ry = rng.uniform(2.0, 4.5) * s, rng.uniform(0.8, 1.6) * s
        cover = np.maximum(cover, _ellipse(size, c, rx, ry, angle + rng.uniform(-0.3, 0.3), soft=0.5))
    return img - contrast * rng.uniform(0.6, 0.9) * cover


def _patches(rng: np.random.Generator, img: Float, size: int, contrast: float, s: float) -> Float:
    """Large faint irregular patches (NEU patches; a stain or a colour change)."""
    blob = _upsampled_noise(rng, size, (5, 5))
    centre, radius = _region(rng, size, 0.45 * s, 0.85 * s)
    area = _ellipse(size, centre, radius, radius * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi), soft=0.8)
    cover = np.clip((blob - 0.35) * 3.0, 0.0, 1.0) * area
    sign = -1.0 if rng.random() < 0.7 else 1.0
    return img + sign * contrast * rng.uniform(0.35, 0.55) * cover


def _inclusion(rng: np.random.Generator, img: Float, size: int, contrast: float, s: float) -> Float:
    """A single elongated dark streak of foreign material along the rolling direction."""
    centre = rng.uniform(20 * s, size - 20 * s, 2)
    angle = rng.choice([0.0, np.pi / 2]) + rng.uniform(-0.2, 0.2)
    rx, ry = rng.uniform(7, 16) * s, rng.uniform(1.0, 1.8) * s
    cover = _ellipse(size, centre, rx, ry, angle, soft=0.4)
    return img - contrast * rng.uniform(0.7, 1.0) * cover


def _poke(rng: np.random.Generator, img: Float, size: int, contrast: float, s: float) -> Float:
    """A small puncture: a dark hole with a bright raised rim and a shadow (MVTec poke)."""
    centre = rng.uniform(12 * s, size - 12 * s, 2)
    r = rng.uniform(1.6, 2.8) * s
    inner = _dots(size, centre[None], np.array([r]), soft=0.4)
    rim = _dots(size, centre[None], np.array([r + 1.1 * s]), soft=0.4) - inner
    shadow = _dots(size, (centre + 0.8 * s)[None], np.array([r]), soft=0.5)
    return img * (1 - 0.8 * np.maximum(inner, 0.5 * shadow)) + contrast * 0.7 * rim


_DEFECTS = {
    "scratch": _scratch,
    "crazing": _crazing,
    "pitted": _pitted,
    "rolled_in_scale": _rolled_in_scale,
    "patches": _patches,
    "inclusion": _inclusion,
    "poke": _poke,
}


def _defect(rng: np.random.Generator, cls: str, img: Float, size: int, contrast: float, scale: float) -> Float:
    """Draw class `cls`'s defect (nothing for `ok`) at `scale` of its training size."""
    draw = _DEFECTS.get(cls)
    return img if draw is None else draw(rng, img, size, contrast, size / 128.0 * scale)


def _nuisances(rng: np.random.Generator, img: Float, size: int, contrast: float) -> Float:
    """Dust specks and loose fibres lying on the part: not defects, on every class alike.
    A fibre is thin and curls; a speck is a sharp dot smaller than a pit and without a rim."""
    s = size / 128.0
    specks = int(rng.integers(0, 3))
    if specks:
        centres = rng.uniform(4, size - 4, (specks, 2))
        cover = _dots(size, centres, rng.uniform(0.6, 1.1, specks) * s, soft=0.4)
        img = img + (1.0 if rng.random() < 0.4 else -1.0) * contrast * rng.uniform(0.6, 1.0) * cover
    if rng.random() < 0.3:
        start = rng.uniform(20 * s, size - 20 * s, 2)
        fibre = _stroke(size, _walk(rng, start, int(rng.integers(7, 13)), 3.0 * s, 0.7), rng.uniform(0.6, 1.0) * s)
        sign = -1.0 if rng.random() < 0.6 else 1.0
        img = img + sign * contrast * rng.uniform(0.5, 0.9) * fibre
    return img


def render(rng: np.random.Generator, label: int, size: int = 128, shifted: bool = False) -> Sample:
    """Render one RGB surface image of class `label`."""
    kind = SURFACES[int(rng.integers(len(SURFACES)))]
    img = _surface(rng, kind, size, shifted)
    contrast = rng.uniform(0.3, 0.55) if not shifted else rng.uniform(0.22, 0.45)
    scale = rng.uniform(*SHIFTED_DEFECT_SCALE) if shifted else 1.0
    img = _defect(rng, CLASSES[label], img, size, contrast, scale)
    img = _nuisances(rng, img, size, contrast)
    if kind == "brushed_metal" and rng.random() < 0.5:
        img = img.T  # the rolling direction, defects and all
    # Lighting: global gain, a linear gradient and a vignette.
    gy, gx = _grid(size)
    yy, xx = gy / size - 0.5, gx / size - 0.5
    gain = rng.uniform(0.5, 1.4) if shifted else rng.uniform(0.8, 1.15)
    grad_amp = rng.uniform(0.1, 0.45) if shifted else rng.uniform(0.0, 0.2)
    theta = rng.uniform(0, 2 * np.pi)
    light = gain * (1 + grad_amp * (np.cos(theta) * xx + np.sin(theta) * yy) * 2)
    light *= 1 - 0.3 * (xx**2 + yy**2)
    img = img * light
    tint = rng.uniform(0.4, 1.2, 3) if kind == "painted" else 1 + rng.uniform(-0.08, 0.08, 3)
    if shifted:
        tint = tint * (1 + rng.uniform(-0.25, 0.25, 3))
    rgb = img[..., None] * tint[None, None, :]
    if shifted:
        rgb = rgb + rng.uniform(0.02, 0.07) * rng.standard_normal(rgb.shape)
    out = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    if shifted and rng.random() < 0.6:
        radius = float(rng.uniform(0.4, 1.0) * size / 128)
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(radius)))
    return Sample(image=out, label=label, surface=kind)


def sample(seed: int, split: str, index: int, size: int = 128) -> Sample:
    """The `index`-th image of `split`; classes are balanced by index."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    return render(rng, index % len(CLASSES), size=size, shifted=split == "shifted")


def _generate_range(
    split: str, start: int, stop: int, seed: int, size: int
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    images = np.empty((stop - start, size, size, 3), dtype=np.uint8)
    labels = np.empty(stop - start, dtype=np.int64)
    for i in range(start, stop):
        s = sample(seed, split, i, size)
        images[i - start], labels[i - start] = s.image, s.label
    return images, labels


#: Fewest images per worker process: below it the processes cost more than they save.
MIN_IMAGES_PER_WORKER = 500


def generate(
    split: str, count: int, seed: int = 0, size: int = 128, workers: int = 1
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """A whole split as (N, H, W, 3) uint8 images and (N,) labels. With `workers` > 1 the
    images are drawn in that many processes (the build's 12,000 took 80 s on one core); the
    result is the same, since every image is a pure function of (seed, split, index)."""
    workers = max(1, min(workers, count // MIN_IMAGES_PER_WORKER))
    if workers == 1:
        return _generate_range(split, 0, count, seed, size)
    bounds = np.linspace(0, count, workers + 1).astype(int)
    # spawn, not fork: the build forks from a process whose torch thread pool is running.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(
            pool.map(
                _generate_range,
                [split] * workers,
                bounds[:-1].tolist(),
                bounds[1:].tolist(),
                [seed] * workers,
                [size] * workers,
            )
        )
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_image_folder(
    root: Path, size: int, classes: tuple[str, ...] | None = None
) -> tuple[NDArray[np.uint8], NDArray[np.int64], tuple[str, ...]]:
    """Load a user's own data in ImageFolder layout (`root/<class>/<image>`)."""
    names = classes or tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not names:
        raise ValueError(f"{root}: no class folders found (expected root/<class>/<image>)")
    images: list[NDArray[np.uint8]] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        if not (root / name).is_dir():
            raise ValueError(f"{root}: no folder for class {name!r} (every split needs one per class)")
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}:
                continue
            with Image.open(path) as im:
                rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            images.append(np.asarray(rgb, dtype=np.uint8))
            labels.append(label)
    if not images:
        raise ValueError(f"{root}: no images found in {', '.join(names)}")
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def write_samples(out: Path, split: str, per_class: int, seed: int = 0) -> list[Path]:
    """Write a few PNGs per class, e.g. for docs, demos and curl examples."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(per_class * len(CLASSES)):
        s = sample(seed, split, i)
        path = out / f"{CLASSES[s.label]}_{i // len(CLASSES)}.png"
        Image.fromarray(s.image).save(path)
        paths.append(path)
    return paths


def write_class_grids(out: Path, per_class: int = 6, seed: int = 0, split: str = "test") -> list[Path]:
    """One PNG per class: `per_class` examples side by side, enlarged 2x so that hairlines,
    pits and dust show in the docs."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, name in enumerate(CLASSES):
        tiles = [sample(seed, split, label + i * len(CLASSES)).image for i in range(per_class)]
        row = np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], axis=1)
        path = out / f"{name}.png"
        Image.fromarray(row).resize((row.shape[1] * 2, row.shape[0] * 2), Image.Resampling.NEAREST).save(path)
        paths.append(path)
    return paths
