"""Hostile bodies, built by hand so they stay small: PNG/JPEG/GIF/TIFF/BMP headers that lie,
decompression bombs, .npy headers that lie about shape or dtype, v2 tensors that lie."""

from __future__ import annotations

import functools
import io
import json
import pickle
import random
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Image files to mutate: (Pillow format, save options, content type).
IMAGE_KINDS: dict[str, tuple[str, dict[str, Any], str]] = {
    "png": ("PNG", {}, "image/png"),
    "png_palette": ("PNG", {}, "image/png"),
    "png_16bit": ("PNG", {}, "image/png"),
    "jpeg": ("JPEG", {"quality": 80}, "image/jpeg"),
    "jpeg_progressive": ("JPEG", {"progressive": True}, "image/jpeg"),
    "gif": ("GIF", {}, "image/png"),
    "bmp": ("BMP", {}, "image/bmp"),
    "tiff": ("TIFF", {}, "image/tiff"),
    "tiff_lzw": ("TIFF", {"compression": "tiff_lzw"}, "image/tiff"),
    "tiff_deflate": ("TIFF", {"compression": "tiff_adobe_deflate"}, "image/tiff"),
    "webp": ("WEBP", {"quality": 70}, "image/webp"),
    "webp_lossless": ("WEBP", {"lossless": True}, "image/webp"),
    "ico": ("ICO", {}, "image/png"),
    "tga": ("TGA", {}, "image/png"),
    "pcx": ("PCX", {}, "image/png"),
    "ppm": ("PPM", {}, "image/png"),
    "eps": ("EPS", {}, "image/png"),
}


def noise_image(size: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@functools.cache
def sample_image(kind: str) -> bytes:
    """A small valid file of `kind` (see IMAGE_KINDS)."""
    fmt, options, _ = IMAGE_KINDS[kind]
    image = noise_image()
    if kind == "png_palette":
        image = image.convert("P")
    elif kind == "png_16bit":
        image = Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


# -- PNG built chunk by chunk ---------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value & 0xFFFFFFFF)


def png(width: int, height: int, idat: bytes, depth: int = 8, colour: int = 2, extra: bytes = b"") -> bytes:
    """A PNG whose IHDR says `width` x `height`, whatever `idat` holds."""
    ihdr = struct.pack(">IIBBBBB", width & 0xFFFFFFFF, height & 0xFFFFFFFF, depth, colour, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@functools.cache
def zlib_zeros(n: int) -> bytes:
    return zlib.compress(b"\0" * n, 9)


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A decompression bomb: the header declares `width` x `height`; 1 MB of zeros compresses to ~1 KB."""
    return png(width, height, zlib_zeros(1_000_000))


@functools.cache
def png_zero_bomb(side: int, depth: int = 8, colour: int = 0) -> bytes:
    """A real zero-filled image of side x side pixels within the pixel limit: tiny on the wire,
    large once decoded."""
    bytes_per_pixel = {0: 1, 2: 3, 4: 2, 6: 4}[colour] * depth // 8
    row = b"\0" * (1 + side * bytes_per_pixel)
    stream = zlib.compressobj(9)
    data = b"".join(stream.compress(row) for _ in range(side)) + stream.flush()
    return png(side, side, data, depth, colour)


def png_text_bomb() -> bytes:
    """A zTXt chunk that inflates to 50 MB (Pillow caps text chunks)."""
    text = b"comment\0\0" + zlib.compress(b"A" * 50_000_000, 9)
    return png(32, 32, zlib.compress(b"\0" * (32 * 97)), extra=png_chunk(b"zTXt", text))


# -- other formats --------------------------------------------------------------------------------


def gif_screen(width: int, height: int, frame_w: int, frame_h: int, lzw_min: int = 2) -> bytes:
    """A GIF whose logical screen and image descriptor say what we like."""
    head = b"GIF89a" + struct.pack("<HHBBB", width & 0xFFFF, height & 0xFFFF, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, frame_w & 0xFFFF, frame_h & 0xFFFF, 0)
    return head + frame + bytes([lzw_min]) + b"\x02\x44\x01\x00" + b";"


def bmp(width: int, height: int, bpp: int = 24, compression: int = 0, pixels: bytes = b"", colours: int = 0) -> bytes:
    """A BMP (BITMAPINFOHEADER) with whatever header fields we like."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, compression, len(pixels), 2835, 2835, colours, 0)
    offset = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + pixels


def tiff(entries: list[tuple[int, int, int, int]], data: bytes = b"", next_ifd: int = 0) -> bytes:
    """A little-endian TIFF with one IFD of (tag, type, count, value) entries; `next_ifd` may
    point back at the first IFD (a loop)."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in sorted(entries):
        ifd += struct.pack("<HHII", tag, kind, count, value & 0xFFFFFFFF)
    ifd += struct.pack("<I", next_ifd)
    return b"II*\0" + struct.pack("<I", 8) + ifd + data


def tiff_basic(
    width: int,
    height: int,
    *,
    bits: int | tuple[int, int] = 8,
    samples: int = 3,
    compression: int = 1,
    photometric: int = 2,
    strip_offset: int | None = None,
    strip_bytes: int = 64,
    sample_format: int = 1,
    next_ifd: int = 0,
    extra_samples: int | None = None,
) -> bytes:
    """A TIFF whose tags lie as told (offsets past the end, odd bit depths, loops). Two bit
    depths (a grey + alpha file) fit inline in the entry."""
    pixels = b"\x7f" * strip_bytes
    bits_entry = (258, 3, 1, bits) if isinstance(bits, int) else (258, 3, 2, bits[0] | bits[1] << 16)
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        bits_entry,
        (259, 3, 1, compression),
        (262, 3, 1, photometric),
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, strip_bytes),
        (339, 3, 1, sample_format),
    ]
    if extra_samples is not None:
        entries.append((338, 3, 1, extra_samples))
    header_size = 8 + 2 + 12 * (len(entries) + 1) + 4
    entries.append((273, 4, 1, header_size if strip_offset is None else strip_offset))
    return tiff(entries, pixels, next_ifd)


def jpeg_with_size(width: int, height: int) -> bytes:
    """A valid JPEG whose SOF marker is patched to say `width` x `height`."""
    data = bytearray(sample_image("jpeg"))
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5 : at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    return bytes(data)


def mutate(data: bytes, rng: random.Random, edits: int) -> bytes:
    """Random edits: flip bytes, write extreme 16/32-bit values into the header area, cut, splice."""
    out = bytearray(data)
    for _ in range(edits):
        op = rng.randrange(5)
        at = rng.randrange(max(1, len(out)))
        if op == 0 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            header_at = rng.randrange(min(len(out), 64) or 1)
            value = rng.choice([0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000])
            out[header_at : header_at + 4] = value.to_bytes(4, rng.choice(["big", "little"]))
        elif op == 2:
            del out[at:]
        elif op == 3:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        else:
            out[at : at + rng.randrange(1, 64)] = b""
    return bytes(out)


# -- .npy -----------------------------------------------------------------------------------------


def npy(header: str, data: bytes, version: tuple[int, int] = (1, 0), header_len: int | None = None) -> bytes:
    """An .npy file with a free-form header dict literal, padded as numpy pads it."""
    raw = header.encode("latin-1")
    size_field = "<H" if version[0] == 1 else "<I"
    prefix = 6 + 2 + struct.calcsize(size_field)
    raw += b" " * ((64 - (prefix + len(raw) + 1) % 64) % 64) + b"\n"
    length = len(raw) if header_len is None else header_len
    return (
        b"\x93NUMPY"
        + bytes(version)
        + struct.pack(size_field, length & (0xFFFF if version[0] == 1 else 0xFFFFFFFF))
        + raw
        + data
    )


def npy_header(descr: str, shape: str, fortran: bool = False) -> str:
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"


def npy_array(arr: np.ndarray[Any, Any], *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def npy_pickled_object() -> bytes:
    """An object-dtype .npy: loading it would unpickle (must be refused)."""
    return npy_array(np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def raw_pickle() -> bytes:
    return pickle.dumps({"__reduce__": "os.system"})


def npz_archive() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((3, 8, 8), np.float32))
    return buf.getvalue()


# -- v2 infer bodies ------------------------------------------------------------------------------


def v2_body(
    shape: Any, data: Any = None, datatype: Any = "FP32", parameters: Any = None, request: dict[str, Any] | None = None
) -> bytes:
    """A v2 infer request with one input and optional top-level `request` keys (json.dumps, so
    NaN/Infinity and big ints get through)."""
    tensor: dict[str, Any] = {"name": "image", "shape": shape, "datatype": datatype}
    if data is not None:
        tensor["data"] = data
    if parameters is not None:
        tensor["parameters"] = parameters
    return json.dumps({"inputs": [tensor], **(request or {})}).encode()


def v2_repeated(size: int, token: str) -> bytes:
    """A right-shaped [1, 3, size, size] tensor whose every value is the JSON text `token`."""
    count = 3 * size * size
    data = "[" + ",".join([token] * count) + "]"
    return b'{"inputs":[{"name":"image","shape":[1,3,%d,%d],"datatype":"FP32","data":%s}]}' % (
        size,
        size,
        data.encode(),
    )


def deep_json(depth: int, inner: str = "0") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()
