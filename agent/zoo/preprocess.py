"""Fit an image or a tensor to a variant's input: 8-bit RGB, resized, (1, 3, size, size) float32
in [0, 1]. The zoo's side of preprocessing, shared by serving, evaluation and profiling."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image


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
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def image_to_input(image: Image.Image | NDArray[np.uint8], size: int) -> NDArray[np.float32]:
    """An image of any size and mode as a (1, 3, size, size) float32 tensor in [0, 1]."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    rgb = to_rgb8(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(rgb, dtype=np.float32) * (1.0 / 255.0)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])


def tensor_to_input(arr: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    """A (1, 3, H, W) float tensor resized to (1, 3, size, size) when its size differs."""
    if arr.shape[-1] == size and arr.shape[-2] == size:
        return arr
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(c), mode="F").resize((size, size), Image.Resampling.BILINEAR))
        for c in arr[0]
    ]
    return np.stack(channels)[None].astype(np.float32)
