"""Bytes <-> tensors: the media types the API accepts, and decoding of image and .npy bodies.

Fitting a decoded image to a variant's input is the zoo's (`agent.zoo.preprocess`)."""

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
from PIL import Image, ImageFile, UnidentifiedImageError

from agent.errors import BadInput, InvalidTensor, UnsupportedMediaType
from agent.zoo.preprocess import Roi, fit_rgb, to_rgb8

#: Content-Types a classify request may carry: an image, or a float32 .npy tensor.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/tiff", "image/webp"})
NPY_TYPES = frozenset({"application/x-npy", "application/npy", "application/octet-stream"})
#: The image formats decoded, the ones IMAGE_TYPES name. Pillow would otherwise open any of
#: its ~40 formats, EPS among them, which runs Ghostscript on the body when it is installed.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: Refuse images that would decode to more pixels than this (decompression bombs).
MAX_PIXELS = 40_000_000
NPY_MAX_HEADER = 10_000  # bytes of .npy header parsed (numpy's own default limit)
#: After an image this large, freed memory is handed back to the OS (see `release`).
TRIM_PIXELS = 1_000_000
#: A JPEG is decoded at the smallest DCT scale that keeps this many times the model's input
#: across the region. Against a full decode + resize (mean absolute difference of the 128 px
#: input, mean / worst image, /255; labels of full@1): 1080p at 1/8 (1.05x) 0.96 / 1.91, the
#: 1/8-scale IDCT's block averaging showing through; at 1/4 (2.1x) 0.29 / 0.47, labels agree
#: on 99.6% of 1,000 test images. 720p at 1/4 (1.4x) 0.49 / 0.87 but labels agree on only
#: 99.2% and accuracy fell 0.5 pt, so 720p stays at 1/2 (2.8x): 2x, not less.
DRAFT_OVERSAMPLE = 2
#: Arithmetic-coded JPEG frames (SOF9-SOF15 but DHT/JPG/DAC): no camera writes them, and their
#: size says nothing about whether they are complete (see `check_jpeg_complete`).
_JPEG_ARITHMETIC = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_DHT, _JPEG_JPG, _JPEG_DAC, _JPEG_SOS = 0xC4, 0xC8, 0xCC, 0xDA
#: What one decoded JSON value may cost at most as Python objects, by the byte that opens it:
#: an empty list `[]` is 56 bytes plus the 8 of its slot in the parent, a float 24 + 8.
JSON_LIST_BYTES, JSON_ITEM_BYTES = 72, 32
#: Bytes of work one array element may cost once decoded (copies, the resize's image).
ARRAY_COPIES = 3


# A truncated image must fail to decode, not be completed with grey: Pillow's default, stated.
ImageFile.LOAD_TRUNCATED_IMAGES = False


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


def media_type(content_type: str) -> str:
    """The bare media type of a Content-Type header: `image/png; q=1` -> `image/png`."""
    return content_type.split(";", 1)[0].strip().lower()


def check_media_type(content_type: str) -> str:
    """The body's media type, refused (415) unless it is one a classify request may carry."""
    kind = media_type(content_type)
    if kind not in IMAGE_TYPES and kind not in NPY_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {kind or '(none)'!r} is not supported; send image/png, image/jpeg or application/x-npy"
        )
    return kind


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


def decode_npy(body: bytes) -> NDArray[np.float32] | NDArray[np.uint8]:
    """A float32 tensor or uint8 frame from an .npy body, read in place from the body's bytes
    (no copy).

    The header is checked before anything is allocated: its dtype must be float32 or uint8, its
    shape must match the bytes that follow (a lying header is a memory bomb), and pickled
    objects or .npz archives are not .npy tensors."""
    if not body:
        raise BadInput("empty request body: expected an .npy tensor")
    if not body.startswith(np.lib.format.MAGIC_PREFIX):
        raise BadInput("body is not an .npy file (no \\x93NUMPY magic); send one array saved with numpy.save")
    shape, fortran, dtype, offset = _npy_header(_npy_header_bytes(body))
    if dtype not in (np.float32, np.uint8):
        raise InvalidTensor(f"expected dtype float32 (3, H, W) or uint8 (H, W, 3), got {dtype}")
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


def load_image_plugins() -> None:
    """Import Pillow's codec plugins now: Pillow imports them on the first `Image.open`, which
    would put some 150 ms of imports (measured on this VM) on the event loop in front of the
    first image request."""
    Image.init()


def open_image(body: bytes) -> Image.Image:
    """Read only the header: refuse garbage, bombs and truncated JPEGs early. The pixels are
    decoded later by `Image.load()` in a worker."""
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
    if image.format == "JPEG":
        check_jpeg_complete(body, width, height)
    return image


def check_jpeg_complete(body: bytes, width: int, height: int) -> None:
    """Refuse a JPEG too short to hold the image its header declares. libjpeg completes such a
    file with grey and only warns, so Pillow would decode a 631-byte file declaring 6000x6000 in
    full. A Huffman-coded scan spends at least one bit on each 8x8 block of the largest
    component (its DC code), so fewer bytes than blocks / 8 after the first scan's header cannot
    be the whole image. Arithmetic coding has no such floor and is refused."""
    sof, data_at = _jpeg_first_scan(body)
    if sof in _JPEG_ARITHMETIC:
        raise BadInput("arithmetic-coded JPEG is not accepted; send a baseline or progressive (Huffman) JPEG")
    blocks = math.ceil(width / 8) * math.ceil(height / 8)
    available = len(body) - data_at if data_at else 0
    if available < blocks // 8:
        raise BadInput(
            f"JPEG is truncated: it declares {width}x{height} pixels, which need at least {blocks // 8} bytes "
            f"of scan data, but it holds {available}"
        )


def _jpeg_first_scan(body: bytes) -> tuple[int | None, int]:
    """(its frame marker, where its first scan's data begins; 0 if none) of a JPEG, from the
    marker segments that precede the scan."""
    at, sof = 2, None
    while at + 4 <= len(body):
        if body[at] != 0xFF:
            return sof, 0
        marker = body[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            at += 2
            continue
        length = int.from_bytes(body[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (_JPEG_DHT, _JPEG_JPG, _JPEG_DAC):
            sof = marker
        if marker == _JPEG_SOS:
            return sof, at + 2 + length
        at += 2 + length
    return sof, 0


def _pillow_bytes(mode: str) -> int:
    """Bytes a pixel of `mode` takes in Pillow's memory (three channels are stored in four)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def jpeg_draft_size(width: int, height: int, size: int, roi: Roi | None = None) -> tuple[int, int]:
    """The size a JPEG decodes at in `decode_to_input` (Pillow's draft: the largest of 1/8, 1/4,
    1/2 that keeps DRAFT_OVERSAMPLE x `size` pixels across the region)."""
    w, h = (roi.width, roi.height) if roi is not None else (width, height)
    target = DRAFT_OVERSAMPLE * size
    want = (math.ceil(target * width / w), math.ceil(target * height / h))
    reduce = min(width // want[0], height // want[1])
    scale = next((s for s in (8, 4, 2) if reduce >= s), 1)
    return (width + scale - 1) // scale, (height + scale - 1) // scale


def image_cost(image: Image.Image, size: int, roi: Roi | None = None) -> int:
    """The most memory decoding `image` (opened, not loaded) for an input of `size` may hold at
    once, from its header: the decoded pixels, the copies `to_rgb8` makes for its mode and the
    box-reduced copy before the final resize."""
    width, height = image.size
    mode = image.mode
    if image.format == "JPEG":
        width, height = jpeg_draft_size(width, height, size, roi)
        mode = "RGB" if mode in ("RGB", "YCbCr") else mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        convert = (0 if mode == "RGBA" else 4) + 4 + 2  # an RGBA copy, the RGB image, alpha and its inverse
    elif mode.startswith("I") or mode == "F":
        convert = 4 + 1 + 1 + 4  # float32 values, their uint8, the grey image, RGB
    else:
        convert = 0 if mode == "RGB" else 4
    return width * height * (_pillow_bytes(mode) + convert + 1)


def json_cost(text: bytes) -> int:
    """The most memory decoding the JSON `text` to Python objects may take: every list as an
    empty list, every other value as a float, counted by the bytes that open them (both counts
    are C loops over the bytes: cheap next to the parse)."""
    return len(text) + JSON_LIST_BYTES * text.count(b"[") + JSON_ITEM_BYTES * (text.count(b",") + 1)


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


def check_frame(
    arr: NDArray[np.float32] | NDArray[np.uint8], max_side: int = 8192
) -> NDArray[np.float32] | NDArray[np.uint8]:
    """A client array as `array_to_input` takes it: a uint8 frame (H, W, 3) or (1, H, W, 3),
    or a float32 tensor (see `check_image_tensor`)."""
    if arr.dtype != np.uint8:
        return check_image_tensor(arr.astype(np.float32, copy=False))
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[2] != 3 or not (1 <= arr.shape[0] <= max_side and 1 <= arr.shape[1] <= max_side):
        raise InvalidTensor(
            f"expected a uint8 frame of shape (H, W, 3) or (1, H, W, 3) with sides up to {max_side}, "
            f"got {tuple(arr.shape)}"
        )
    return arr


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
    return np.ascontiguousarray(check_finite(arr))


def check_finite(arr: NDArray[np.float32]) -> NDArray[np.float32]:
    if not np.isfinite(arr).all():
        raise InvalidTensor("tensor contains NaN or infinity")
    return arr


def decode_to_input(
    image: Image.Image, size: int, roi: Roi | None = None, resize: str = "bilinear"
) -> NDArray[np.float32]:
    """Decode an opened image (see `open_image`) straight to the model's input.

    A JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) that still gives at least
    DRAFT_OVERSAMPLE x `size` pixels across the region (Pillow's draft mode): libjpeg skips the detail the model
    would average away anyway, so a 4K frame costs a fraction of a full decode. Every format
    is then cropped to the ROI, box-reduced and resized in one `resize` call (`_fit`)."""
    width, height = image.size
    if roi is not None:
        roi.check(width, height)
    x, y, w, h = (roi.x, roi.y, roi.width, roi.height) if roi is not None else (0, 0, width, height)
    if image.format == "JPEG":
        target = DRAFT_OVERSAMPLE * size
        image.draft("RGB", (math.ceil(target * width / w), math.ceil(target * height / h)))
    rgb = to_rgb8(load_pixels(image))
    sx, sy = rgb.width / width, rgb.height / height
    box = (x * sx, y * sy, (x + w) * sx, (y + h) * sy) if roi is not None else None
    return fit_rgb(rgb, size, box, resize)
