"""Hostile payloads as hypothesis strategies: image bombs and lying image headers, .npy files
that lie about shape or dtype (or hold pickles), v2 tensors with wrong shapes, datatypes,
values, nesting and binary sizes. All are well-formed HTTP, so the app owes each a JSON answer."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
from hypothesis import strategies as st

from tests.fuzz import payloads as p
from tests.fuzz.schema import Target
from tests.fuzz.wire import Case, http_request, path_segment

IMAGE_TYPES = ["image/png", "image/jpeg", "image/bmp", "image/tiff", "image/webp"]
NPY = "application/x-npy"
ODD_SHAPES = [
    "()",
    "(0,)",
    "(3, 0, 0)",
    "(-3, 8, 8)",
    "(3, -8, -8)",
    "(2**62, 4, 4)",
    f"({2**62}, 4, 4)",
    "(3, 100000, 100000)",
    "(100000, 100000, 100000)",
    "(1, 3, 4096, 4096)",
    "(1, 3, 4097, 1)",
    "(3, 8, 8, 1, 1, 1, 1, 1, 1)",
    "'abc'",
    "[3, 8, 8]",
    "None",
    "(3.5, 2)",
    "(3, 8, True)",
    "(18446744073709551616,)",
    "(3, 9223372036854775807, 2)",
]
DESCRS = [
    "'<f8'",
    "'<f2'",
    "'>f4'",
    "'|u1'",
    "'<i4'",
    "'|O'",
    "'<U8'",
    "'|V16'",
    "'|b1'",
    "[('a', '<f4')]",
    "'<c8'",
    "'garbage'",
    "'<f4'",
    "'f4'",
    "'<M8[s]'",
    "42",
]
TIFF_BITS: list[int | tuple[int, int]] = [1, 2, 4, 8, 12, 16, 32, 64, 0, (8, 8), (16, 16), (8, 16)]
V2_TOKENS = ["0.5", "1e308", "-1e308", "1e400", "NaN", "Infinity", "null", "true", '"a"', "[]", "{}", "1", "-0.0"]
V2_DATATYPES = ["FP64", "FP16", "BYTES", "INT8", "fp32", "", None, 123, ["FP32"], "FP32 "]
V2_BUDGETS = [0.5, 1, True, "0.5", None, -1, 0, 0.33, 1e308, [0.5], {"x": 1}, 2]
BINARY_SIZES: list[Any] = ["exact", "exact_float", "exact+1", -1, 0, "x", True, None, 2**70, [1], 1e308]


def classify(body: bytes, content_type: str, query: str = "") -> bytes:
    return http_request("POST", "/v1/classify" + query, body, {"Content-Type": content_type})


def infer(model: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    return http_request(
        "POST", f"/v2/models/{path_segment(model)}/infer", body, {"Content-Type": "application/json", **(headers or {})}
    )


# -- image payloads -------------------------------------------------------------------------------


@st.composite
def png_lies(draw: st.DrawFn) -> Case:
    dims = st.sampled_from(
        [
            (60000, 60000),
            (100000, 1),
            (1, 100000000),
            (0, 0),
            (0, 10),
            (2**31 - 1, 2**31 - 1),
            (2**32 - 1, 1),
            (65535, 65535),
            (8000, 5000),
            (6325, 6325),
        ]
    )
    width, height = draw(st.one_of(dims, st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))))
    idat = draw(st.sampled_from([p.zlib_zeros(1_000_000), b"", b"\x78\x9c\x00", p.zlib_zeros(10)[:-3], b"garbage"]))
    depth = draw(st.sampled_from([8, 8, 16, 1, 2, 4, 3, 0, 255]))
    colour = draw(st.sampled_from([2, 0, 3, 4, 6, 1, 7]))
    return Case("payload", "png_bomb", classify(p.png(width, height, idat, depth, colour), "image/png"))


@st.composite
def png_chunks(draw: st.DrawFn) -> Case:
    """A valid header, then chunks that lie about their length or CRC, APNG frame counts, text bombs."""
    kind = draw(
        st.sampled_from([b"IDAT", b"tEXt", b"zTXt", b"iCCP", b"PLTE", b"tRNS", b"acTL", b"fcTL", b"eXIf", b"XxXx"])
    )
    data = draw(st.binary(max_size=64))
    chunk = p.png_chunk(kind, data, draw(st.sampled_from([None, 0, 0xFFFFFFFF])))
    if draw(st.booleans()):
        chunk = b"\x7f\xff\xff\xff" + chunk[4:]  # declared length 2 GiB
    image = p.png(32, 32, p.zlib_zeros(32 * 97), extra=chunk)
    if draw(st.booleans()):
        image = image[: -len(p.png_chunk(b"IEND", b""))]  # no IEND
    return Case("payload", "png_chunks", classify(image, "image/png"))


@st.composite
def image_mutation(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(list(p.IMAGE_KINDS)))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    body = p.mutate(p.sample_image(kind), rng, draw(st.integers(1, 10)))
    content_type = draw(st.sampled_from([p.IMAGE_KINDS[kind][2], *IMAGE_TYPES]))
    return Case("payload", f"mutated_{kind}", classify(body, content_type))


@st.composite
def image_truncated(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(list(p.IMAGE_KINDS)))
    full = p.sample_image(kind)
    body = full[: draw(st.integers(1, len(full) - 1))]
    return Case("payload", "truncated_image", classify(body, p.IMAGE_KINDS[kind][2]))


@st.composite
def format_oddities(draw: st.DrawFn) -> Case:
    """GIF/BMP/TIFF/JPEG headers with extreme fields."""
    side = st.one_of(st.sampled_from([0, 1, 65535, 2**31 - 1, -1, -(2**31), 60000]), st.integers(-(2**31), 2**31 - 1))
    which = draw(st.sampled_from(["gif", "bmp", "tiff", "jpeg"]))
    if which == "gif":
        w, h, fw, fh = (draw(side) for _ in range(4))
        body = p.gif_screen(w, h, fw, fh, draw(st.integers(0, 14)))
    elif which == "bmp":
        body = p.bmp(
            draw(side),
            draw(side),
            draw(st.sampled_from([0, 1, 2, 4, 7, 8, 16, 24, 32, 64])),
            draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 99])),
            draw(st.binary(max_size=256)),
            draw(st.sampled_from([0, 2, 256, 2**31 - 1])),
        )
    elif which == "tiff":
        body = p.tiff_basic(
            draw(side) & 0xFFFFFFFF,
            draw(side) & 0xFFFFFFFF,
            bits=draw(st.sampled_from(TIFF_BITS)),
            samples=draw(st.sampled_from([0, 1, 2, 3, 4, 10, 65535])),
            extra_samples=draw(st.sampled_from([None, 0, 1, 2, 3])),
            compression=draw(st.sampled_from([1, 5, 7, 8, 32773, 32946, 34712, 65535])),
            photometric=draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 32844])),
            strip_offset=draw(st.sampled_from([None, 0, 2**31, 0xFFFFFFFF])),
            strip_bytes=draw(st.sampled_from([0, 1, 64, 4096])),
            sample_format=draw(st.sampled_from([1, 2, 3, 4])),
            next_ifd=draw(st.sampled_from([0, 0, 8, 0xFFFFFFF0])),
        )
    else:
        body = p.jpeg_with_size(draw(side), draw(side))
    return Case("payload", f"{which}_header", classify(body, draw(st.sampled_from(IMAGE_TYPES))))


@st.composite
def zero_bomb(draw: st.DrawFn) -> Case:
    """A real image within the pixel limit whose pixels are all zeros: tiny on the wire."""
    side, depth, colour = draw(st.sampled_from([(2000, 8, 2), (3000, 8, 0), (2000, 16, 0), (1500, 8, 6)]))
    return Case("payload", "zero_bomb", classify(p.png_zero_bomb(side, depth, colour), "image/png"))


# -- .npy payloads --------------------------------------------------------------------------------


@st.composite
def npy_lies(draw: st.DrawFn) -> Case:
    shape = draw(
        st.one_of(
            st.sampled_from(ODD_SHAPES),
            st.lists(st.integers(-4, 2**40), max_size=9).map(lambda s: "(" + "".join(f"{d}, " for d in s) + ")"),
        )
    )
    descr = draw(st.sampled_from(["'<f4'", "'<f4'", *DESCRS]))
    data = b"\0" * draw(st.sampled_from([0, 16, 768, 4096, 65536]))
    body = p.npy(p.npy_header(descr, shape, draw(st.booleans())), data, draw(st.sampled_from([(1, 0), (2, 0), (3, 0)])))
    return Case("payload", "npy_lying_header", classify(body, draw(st.sampled_from([NPY, "application/octet-stream"]))))


@st.composite
def npy_garbage(draw: st.DrawFn) -> Case:
    choice = draw(st.integers(0, 6))
    data = b"\0" * 768
    if choice == 0:
        body = p.npy(draw(st.text(st.characters(max_codepoint=255), max_size=80)), data)
    elif choice == 1:
        body = p.npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 8, 8), 'x': " + "1" * 20_000 + "}", data, (2, 0)
        )
    elif choice == 2:
        body = p.npy(
            p.npy_header("'<f4'", "(3, 8, 8)"),
            data,
            header_len=draw(st.sampled_from([0, 1, 65535, 2**32 - 1])),
            version=draw(st.sampled_from([(1, 0), (2, 0)])),
        )
    elif choice == 3:
        body = p.npy(
            p.npy_header("'<f4'", "(3, 8, 8)"),
            data,
            version=draw(st.sampled_from([(0, 0), (4, 0), (255, 255), (1, 1)])),
        )
    elif choice == 4:
        body = b"\x93NUMPY" + draw(st.binary(max_size=12))
    elif choice == 5:
        body = p.npy("{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000 + "}", data)
    else:
        body = draw(st.sampled_from([p.npy_pickled_object(), p.raw_pickle(), p.npz_archive()]))
    return Case("payload", "npy_garbage", classify(body, NPY))


@st.composite
def npy_tensors(draw: st.DrawFn) -> Case:
    """Honest headers: fortran order, NaN/inf, big-endian, sizes in and out of the limits."""
    h, w = draw(st.sampled_from([(1, 1), (8, 8), (128, 128), (300, 7), (1, 5000), (4097, 1)]))
    arr = np.full((3, h, w), 0.25, np.float32)
    choice = draw(st.sampled_from(["plain", "fortran", "nan", "inf", "big_endian", "batch", "batch2"]))
    if choice == "fortran":
        arr = np.asfortranarray(arr)
    elif choice in ("nan", "inf"):
        arr.flat[draw(st.integers(0, arr.size - 1))] = np.nan if choice == "nan" else np.inf
    elif choice == "big_endian":
        arr = arr.astype(">f4")
    elif choice == "batch":
        arr = arr[None]
    elif choice == "batch2":
        arr = np.stack([arr, arr])
    query = draw(st.sampled_from(["", "?explain=true", "?deadline_ms=0.001", "?deadline_ms=5000"]))
    served = choice in ("plain", "fortran", "batch") and max(h, w) <= 4096 and "0.001" not in query
    return Case("payload", f"npy_{choice}", classify(p.npy_array(arr), NPY, query), expect=200 if served else None)


# -- v2 infer payloads ----------------------------------------------------------------------------


def _model(draw: st.DrawFn, target: Target) -> tuple[str, int]:
    name = draw(st.sampled_from([*sorted(target.models), "nope"]))
    return name, target.models.get(name, 64)


@st.composite
def v2_json(draw: st.DrawFn, target: Target) -> Case:
    name, size = _model(draw, target)
    choice = draw(st.sampled_from(["shape", "datatype", "length", "values", "nesting", "structure", "budget"]))
    right = [1, 3, size, size]
    if choice == "shape":
        shape = draw(
            st.one_of(
                st.lists(st.one_of(st.integers(-2, 200), st.sampled_from([2**62, 2**64, -(2**63)])), max_size=10),
                st.sampled_from([[1, 3, size], [3, size, size], [2, 3, size, size], [1, 3, size, size + 1], "x", None]),
            )
        )
        body = p.v2_body(shape, [0.5] * draw(st.sampled_from([0, 1, 12])))
    elif choice == "datatype":
        body = p.v2_body([1, 3, 2, 2], [0.5] * 12, draw(st.sampled_from(V2_DATATYPES)))
    elif choice == "length":
        body = p.v2_body(right, [0.5] * draw(st.sampled_from([0, 1, 3 * size * size - 1, 3 * size * size + 1])))
    elif choice == "values":
        body = p.v2_repeated(size, draw(st.sampled_from(V2_TOKENS)))
    elif choice == "nesting":
        depth = draw(st.sampled_from([64, 100, 1000, 1025, 100_000]))
        inner = p.deep_json(depth).decode()
        body = draw(
            st.sampled_from(
                [
                    p.deep_json(depth),
                    json.dumps({"inputs": "X"}).replace('"X"', inner).encode(),
                    p.v2_body(right).replace(b'"FP32"', b'"FP32", "data": ' + inner.encode()),
                ]
            )
        )
    elif choice == "structure":
        body = draw(
            st.sampled_from(
                [
                    b"[]",
                    b"1",
                    b'"x"',
                    b"null",
                    b"{}",
                    b'{"inputs": []}',
                    b'{"inputs": {}}',
                    b'{"inputs": [1]}',
                    json.dumps({"inputs": [{"name": "i", "shape": [1], "datatype": "FP32", "data": [1]}] * 5}).encode(),
                    b'\xef\xbb\xbf{"inputs": []}',
                    b'{"id": "\xff\xfe", "inputs": []}',
                    b'{"inputs": [], "inputs": 1}',
                    json.dumps({"id": 5, "inputs": [{"name": 1, "shape": [1], "datatype": "FP32"}]}).encode(),
                    b'{"inputs": [{"name": "\\ud800", "shape": [1,3,2,2], "datatype": "FP32", "data": []}]}',
                ]
            )
        )
    else:
        budget = draw(st.sampled_from(V2_BUDGETS))
        body = p.v2_body(right, [0.5] * (3 * size * size), request={"parameters": {"token_budget": budget}})
    return Case("payload", f"v2_{choice}", infer(name, body))


@st.composite
def v2_binary(draw: st.DrawFn, target: Target) -> Case:
    """The binary tensor extension with lying sizes: header length, binary_data_size, the bytes sent."""
    name, size = _model(draw, target)
    exact = 4 * 3 * size * size
    declared = draw(st.sampled_from(BINARY_SIZES))
    value = (
        {"exact": exact, "exact_float": float(exact), "exact+1": exact + 1}.get(declared, declared)
        if isinstance(declared, str)
        else declared
    )
    header = p.v2_body([1, 3, size, size], parameters={"binary_data_size": value})
    sent = draw(st.sampled_from([exact, 0, exact - 1, exact + 7, 3]))
    tensor = (np.full(sent // 4 + 1, 0.5, "<f4").tobytes())[:sent]
    split = draw(st.sampled_from(["right", "right", "0", "-1", "body+1", "abc", "9" * 5000, "1e3", " 12", "2"]))
    length = {"right": str(len(header)), "body+1": str(len(header) + sent + 1)}.get(split, split)
    return Case(
        "payload",
        "v2_binary",
        infer(
            name,
            header + tensor,
            {"Inference-Header-Content-Length": length, "Content-Type": "application/octet-stream"},
        ),
    )


def payload_cases(target: Target) -> st.SearchStrategy[Case]:
    families: list[st.SearchStrategy[Case]] = [
        png_lies(),
        png_chunks(),
        image_mutation(),
        image_mutation(),
        image_truncated(),
        format_oddities(),
        format_oddities(),
        npy_lies(),
        npy_lies(),
        npy_garbage(),
        npy_tensors(),
        v2_json(target),
        v2_json(target),
        v2_binary(target),
    ]
    return st.one_of(*families, zero_bomb()) if target.models else st.one_of(*families)
