"""The fuzzer's cases, in three categories: schema-driven (every route of the OpenAPI schema),
raw bytes (malformed HTTP) and hostile payloads (image bombs, lying .npy and v2 tensors).

Each category is a hypothesis strategy of `Case`; `catalogue()` adds the named hostile cases
that must be tried in every run. `bench/fuzz.py` runs thousands, `tests/test_fuzz.py` a few hundred.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.fuzz import payloads as p
from tests.fuzz.hostile import NPY, classify, infer, payload_cases
from tests.fuzz.raw import raw_cases
from tests.fuzz.schema import Target, discover, schema_cases, tensor_npy
from tests.fuzz.wire import Case

__all__ = ["CATEGORIES", "Target", "catalogue", "discover", "generate", "normal_request", "strategies", "tensor_case"]

CATEGORIES = ("schema", "raw", "payload")


def normal_request(image: bytes | None = None) -> Case:
    """A request that must succeed: classify a small PNG."""
    return Case("normal", "classify_png", classify(image or p.sample_image("png"), "image/png"))


def strategies(target: Target) -> dict[str, st.SearchStrategy[Case]]:
    return {"schema": schema_cases(target), "raw": raw_cases(), "payload": payload_cases(target)}


# -- named cases tried in every run ---------------------------------------------------------------


def catalogue(target: Target) -> list[Case]:
    """The hostile cases the issue names, each once."""
    adaptive = target.adaptive
    size = target.models[adaptive]
    valid = np.full((3, size, size), 0.5, np.float32)
    header = p.v2_body([1, 3, size, size], parameters={"binary_data_size": float(4 * valid.size)})
    named = {
        "png_60000x60000": classify(p.png_bomb(), "image/png"),
        "png_zero_bomb_6000": classify(p.png_zero_bomb(6000), "image/png"),
        "png_zero_bomb_16bit_6000": classify(p.png_zero_bomb(6000, 16), "image/png"),
        "png_ztxt_bomb": classify(p.png_text_bomb(), "image/png"),
        "png_truncated": classify(p.sample_image("png")[:100], "image/png"),
        "jpeg_truncated": classify(p.sample_image("jpeg")[:300], "image/jpeg"),
        "jpeg_65500x65500": classify(p.jpeg_with_size(65500, 65500), "image/jpeg"),
        "gif_65535_screen": classify(p.gif_screen(65535, 65535, 65535, 65535), "image/png"),
        "tiff_ifd_loop": classify(p.tiff_basic(8, 8, next_ifd=8), "image/tiff"),
        "tiff_strip_past_end": classify(p.tiff_basic(64, 64, strip_offset=2**31), "image/tiff"),
        "tiff_grey_premultiplied_alpha": classify(
            p.tiff_basic(4, 4, bits=(8, 8), samples=2, photometric=1, strip_bytes=32, extra_samples=1), "image/tiff"
        ),
        "bmp_huge": classify(p.bmp(2**31 - 1, -(2**31), 24), "image/bmp"),
        "eps_ghostscript": classify(p.sample_image("eps"), "image/png"),
        "npy_shape_lies_huge": classify(p.npy(p.npy_header("'<f4'", "(100000, 100000, 100000)"), b"\0" * 16), NPY),
        "npy_shape_lies_small": classify(p.npy(p.npy_header("'<f4'", "(3, 4, 4)"), b"\0" * 1000), NPY),
        "npy_dtype_lies": classify(p.npy(p.npy_header("'<f8'", "(3, 8, 8)"), b"\0" * 768), NPY),
        "npy_fortran_order": classify(p.npy_array(np.asfortranarray(valid)), NPY),
        "npy_object_pickle": classify(p.npy_pickled_object(), NPY),
        "npy_product_overflow": classify(p.npy(p.npy_header("'<f4'", f"({2**62}, 4, 4)"), b"\0" * 64), NPY),
        "npy_int64_overflow": classify(p.npy(p.npy_header("'<f4'", "(9223372036854775807, 3)"), b"\0" * 64), NPY),
        "v2_wrong_shape": infer(adaptive, p.v2_body([1, 3, 2, 2], [0.5] * 12)),
        "v2_wrong_datatype": infer(adaptive, p.v2_body([1, 3, 2, 2], [0.5] * 12, "FP64")),
        "v2_huge_numbers": infer(adaptive, p.v2_repeated(size, "1e308")),
        "v2_nan": infer(adaptive, p.v2_repeated(size, "NaN")),
        "v2_deep_nesting": infer(adaptive, p.deep_json(100_000)),
        "v2_binary_size_float": infer(
            adaptive, header + valid.tobytes(), {"Inference-Header-Content-Length": str(len(header))}
        ),
        "v2_binary_short": infer(adaptive, header + b"\0" * 10, {"Inference-Header-Content-Length": str(len(header))}),
    }
    over_limit = b"".join(b"100000\r\n" + b"\0" * 0x100000 + b"\r\n" for _ in range(9)) + b"0\r\n\r\n"
    chunked_head = (
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    expect = {
        "png_60000x60000": 400,
        # 35 KB that decode to 36 M pixels and their RGB copy: past max_decoded_bytes (issue 20).
        "png_zero_bomb_6000": 413,
        "png_zero_bomb_16bit_6000": 413,
        "eps_ghostscript": 400,
        "tiff_grey_premultiplied_alpha": 200,
        "npy_shape_lies_huge": 400,
        "npy_fortran_order": 200,
        "npy_object_pickle": 422,
        "v2_binary_size_float": 422,
    }
    return [Case("payload", name, data, expect=expect.get(name)) for name, data in named.items()] + [
        Case("raw", "chunked_over_the_body_limit", chunked_head + over_limit, expect=413),
    ]


def generate(strategy: st.SearchStrategy[Case], count: int, seed_value: int, sink: Callable[[Case], None]) -> None:
    """Feed `count` generated cases to `sink` (hypothesis drives generation; no shrinking, no database)."""

    @seed(seed_value)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(case: Case) -> None:
        sink(case)

    run()


def tensor_case(side: int) -> Case:
    return Case("normal", "classify_npy", classify(tensor_npy(side), NPY))
