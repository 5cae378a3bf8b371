"""Fit an image or a tensor to a variant's input: 8-bit RGB, resized, (1, 3, size, size) float32
in [0, 1]. The zoo's side of preprocessing, shared by serving, evaluation and profiling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageChops

from agent.errors import RoiOutsideFrame

#: The filter images are resized with unless a variant's manifest names another: Pillow's
#: bilinear, which widens its triangle kernel to the whole footprint when shrinking
#: (antialiased, unlike OpenCV's INTER_LINEAR).
RESIZE_FILTER = Image.Resampling.BILINEAR
#: The manifest's `preprocess.resize` names and Pillow's filters.
FILTERS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}
#: Before the final resize, a large image is first box-reduced by a whole factor while it stays
#: at least this many times the target (Pillow's reducing_gap): a 1080p PNG is averaged 7x7
#: in one cheap pass instead of the bilinear kernel spanning 15x8 source pixels per output.
REDUCING_GAP = 2.0
#: The frame layouts of uint8 arrays: RGB, or BGR as OpenCV holds frames.
ChannelOrder = Literal["rgb", "bgr"]


@dataclass(frozen=True)
class Roi:
    """A region of interest in source pixels: what an inspection station looks at."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Roi:
        parts = text.split(",")
        try:
            x, y, width, height = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"expected x,y,w,h in whole source pixels, got {text!r}") from None
        if x < 0 or y < 0 or width < 1 or height < 1:
            raise ValueError(f"x and y must be >= 0 and w, h >= 1, got {text!r}")
        return cls(x, y, width, height)

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}"

    def check(self, width: int, height: int) -> None:
        if self.x + self.width > width or self.y + self.height > height:
            raise RoiOutsideFrame(
                f"roi={self} (x,y,w,h) reaches outside the {width}x{height} frame: "
                f"x + w must be <= {width} and y + h <= {height}"
            )


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any mode (L, LA, La, P, RGBA, I;16, I, F, CMYK) to 8-bit RGB; alpha is composited on black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.array(image, dtype=np.float32)  # one float32 copy, scaled in place: 4 bytes a pixel, not 24
        if image.mode.startswith("I;16"):
            arr /= 257.0
        elif arr.size and arr.max() > 255:
            arr *= 255.0 / arr.max()
        image = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), mode="L")
    if image.mode == "La":  # grey with premultiplied alpha (TIFF): Pillow converts it to LA only
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return _composite_on_black(image if image.mode == "RGBA" else image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    """RGBA over an opaque black background, as RGB: the colour scaled by alpha. Pasting black
    through the inverted alpha does that in place on the RGB copy (the same pixels as
    `Image.alpha_composite` over a black image), so a large RGBA frame costs its RGB copy and two
    one-byte masks, not a background, a composite and its RGB copy besides."""
    rgb = rgba.convert("RGB")
    rgb.paste((0, 0, 0), None, ImageChops.invert(rgba.getchannel("A")))
    return rgb


def fit_rgb(
    rgb: Image.Image, size: int, box: tuple[float, float, float, float] | None = None, resize: str = "bilinear"
) -> NDArray[np.float32]:
    """Crop to `box` (in `rgb`'s pixels), resize to size x size, as (1, 3, size, size) in [0, 1]."""
    if rgb.size != (size, size) or box is not None:
        rgb = rgb.resize((size, size), FILTERS[resize], box=box, reducing_gap=REDUCING_GAP)
    arr = np.asarray(rgb, dtype=np.float32) * (1.0 / 255.0)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])


def image_to_input(image: Image.Image | NDArray[np.uint8], size: int, resize: str = "bilinear") -> NDArray[np.float32]:
    """A decoded image (or an (H, W, 3) uint8 RGB array) of any size and mode as a
    (1, 3, size, size) float32 tensor in [0, 1]."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return fit_rgb(to_rgb8(image), size, resize=resize)


def tensor_to_input(arr: NDArray[np.float32], size: int, resize: str = "bilinear") -> NDArray[np.float32]:
    """A (1, 3, H, W) float tensor resized to (1, 3, size, size) when its size differs."""
    if arr.shape[-1] == size and arr.shape[-2] == size:
        return arr
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(c), mode="F").resize((size, size), FILTERS[resize]))
        for c in arr[0]
    ]
    return np.stack(channels)[None].astype(np.float32)


def array_to_input(
    arr: NDArray[np.float32] | NDArray[np.uint8],
    size: int,
    channel_order: ChannelOrder = "rgb",
    roi: Roi | None = None,
    resize: str = "bilinear",
) -> NDArray[np.float32]:
    """A checked client array (see `check_frame`) as the model's (1, 3, size, size) input:
    a float32 (1, 3, H, W) tensor in [0, 1], or a uint8 (H, W, 3) frame as cameras hold them.
    BGR is turned into RGB after the resize, where it costs 3 x size^2 values, not the frame."""
    if arr.dtype == np.uint8:
        height, width = arr.shape[0], arr.shape[1]
        if roi is not None:
            roi.check(width, height)
            arr = arr[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width]
        out = fit_rgb(Image.fromarray(np.ascontiguousarray(arr)), size, resize=resize)
    else:
        height, width = arr.shape[2], arr.shape[3]
        if roi is not None:
            roi.check(width, height)
            arr = arr[:, :, roi.y : roi.y + roi.height, roi.x : roi.x + roi.width]
        out = tensor_to_input(arr.astype(np.float32, copy=False), size, resize)
    return np.ascontiguousarray(out[:, ::-1] if channel_order == "bgr" else out)
