"""Bytes <-> tensors: decode images and .npy bodies, and fit any image to a variant's input."""

from __future__ import annotations

import ctypes
import functools
import io
import math
import tokenize
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from agent.errors import BadInput, InvalidTensor

#: Refuse images that would decode to more pixels than this (decompression bombs).
MAX_PIXELS = 40_000_000
#: The formats the API accepts (IMAGE_TYPES in the server). Pillow would otherwise open any of
#: its ~40 formats, EPS among them, which runs Ghostscript on the body when it is installed.
NPY_MAX_HEADER = 10_000  # bytes of .npy header parsed (numpy's own default limit)
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: After an image this large, freed memory is handed back to the OS (see `release`).
TRIM_PIXELS = 1_000_000


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()

#: glibc's mallopt parameter for the size from which blocks are mmapped (malloc.h).
_M_MMAP_THRESHOLD = -3
#: Request bodies, decoded images and tensors above this size get their own mapping.
MMAP_THRESHOLD_BYTES = 256 * 1024


def fix_mmap_threshold() -> bool:
    """Keep glibc's mmap threshold at MMAP_THRESHOLD_BYTES for the daemon's life. By default
    glibc raises it to the size of each large block freed (up to 32 MB), after which bodies
    and images of a few MB come from the heap and fragment it: bench/fuzz grew RSS by 31 MB,
    10.7 MB with the threshold fixed. True when set (glibc only)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


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


def decode_npy(body: bytes) -> NDArray[np.float32]:
    """A float32 tensor from an .npy body, read in place from the body's bytes (no copy).

    The header is checked before anything is allocated: its dtype must be float32 and its
    shape must match the bytes that follow (a lying header is a memory bomb), and pickled
    objects or .npz archives are not .npy tensors."""
    if not body:
        raise BadInput("empty request body: expected an .npy tensor")
    if not body.startswith(np.lib.format.MAGIC_PREFIX):
        raise BadInput("body is not an .npy file (no \\x93NUMPY magic); send one array saved with numpy.save")
    shape, fortran, dtype, offset = _npy_header(_npy_header_bytes(body))
    if dtype != np.float32:
        raise InvalidTensor(f"expected dtype float32, got {dtype}")
    needed, available = math.prod(shape) * dtype.itemsize, len(body) - offset
    if needed != available:
        raise BadInput(
            f".npy header declares shape {shape} ({needed} bytes) but the body holds {available} bytes of data"
        )
    flat = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


def _npy_header_bytes(body: bytes) -> bytes:
    """The magic, version, length and header of an .npy body (garbage past its end is the
    parser's to reject)."""
    major = body[6:7]
    if major == b"\x01" and len(body) >= 10:
        return body[: 10 + int.from_bytes(body[8:10], "little")]
    if major in (b"\x02", b"\x03") and len(body) >= 12:
        return body[: 12 + min(int.from_bytes(body[8:12], "little"), NPY_MAX_HEADER)]
    return body[:12]


@functools.lru_cache(maxsize=32)
def _npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """(shape, Fortran order, dtype, data offset) of an .npy header. Cached: a camera sends the
    same header with every frame, and numpy parses it with ast.literal_eval (a compile per call)."""
    stream = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=NPY_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=NPY_MAX_HEADER)
        else:
            raise BadInput(f"unsupported .npy format version {version[0]}.{version[1]}; send version 1.0 or 2.0")
    # numpy parses the header with ast.literal_eval, which lets tokenize.TokenError through too.
    except (ValueError, OSError, EOFError, SyntaxError, RecursionError, MemoryError, tokenize.TokenError) as exc:
        raise BadInput(f"cannot decode .npy body: {exc}") from exc
    return shape, fortran, dtype, stream.tell()


def open_image(body: bytes) -> Image.Image:
    """Read only the header (cheap, on the event loop): refuse garbage and bombs early.
    The pixels are decoded later by `Image.load()` in a worker."""
    if not body:
        raise BadInput("empty request body: expected an image")
    try:
        image = Image.open(io.BytesIO(body), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise BadInput(f"cannot decode image: not a {', '.join(IMAGE_FORMATS)} file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"cannot decode image: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise BadInput(f"image of {width}x{height} pixels is outside the limit of 1..{MAX_PIXELS} pixels")
    return image


def release(image: Image.Image) -> None:
    """Free a decoded image now. After a large one, also return the freed heap to the OS: glibc
    keeps freed blocks in per-thread arenas, so a few big images would otherwise leave the
    daemon hundreds of MB larger for good."""
    pixels = image.width * image.height
    image.close()
    if pixels >= TRIM_PIXELS and _malloc_trim is not None:
        _malloc_trim(0)


def load_pixels(image: Image.Image) -> Image.Image:
    """Decode the pixels; a truncated or corrupt file fails here with a clear error."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        error = f"cannot decode image: {exc}"
    else:
        return image
    # Raised outside the except block on purpose: a chained cause would keep the decoder's frames,
    # and with them the half-decoded pixels (up to MAX_PIXELS), alive until the cycle collector runs,
    # after `release` has trimmed the heap.
    raise BadInput(error)


def tensor_to_input(arr: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    """A (1, 3, H, W) float tensor resized to (1, 3, size, size) when its size differs."""
    if arr.shape[-1] == size and arr.shape[-2] == size:
        return arr
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(c), mode="F").resize((size, size), Image.Resampling.BILINEAR))
        for c in arr[0]
    ]
    return np.stack(channels)[None].astype(np.float32)


def check_image_tensor(arr: NDArray[np.float32], max_side: int = 4096) -> NDArray[np.float32]:
    """A client tensor as (1, 3, H, W): shape (3, H, W) or (1, 3, H, W), finite values."""
    if arr.ndim == 3:
        arr = arr[None]
    if (
        arr.ndim != 4
        or arr.shape[0] != 1
        or arr.shape[1] != 3
        or not (1 <= arr.shape[2] <= max_side and 1 <= arr.shape[3] <= max_side)
    ):
        raise InvalidTensor(f"expected a float32 tensor of shape (3, H, W) or (1, 3, H, W), got {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise InvalidTensor("tensor contains NaN or infinity")
    return np.ascontiguousarray(arr)
