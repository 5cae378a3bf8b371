"""Camera frames through the daemon: what decoding a 720p, 1080p or 4K frame costs.

Round trips of one daemon (full@1 pinned, one keep-alive http.client connection), the bodies
interleaved call by call so that they share the machine's state: a 128 px PNG (the model's own
size), JPEG frames (quality 90) at 720p, 1080p and 4K, a 1080p PNG, and a 1080p uint8 frame as
.npy (the layout camera code holds). Each answer's decode_ms and compute_ms split the time.
Beside it, in process: the old path (the whole frame decoded, one resize over every source
pixel) against the new one (JPEG draft mode, box reduction, one resize), and their equivalence
on test images upscaled to 1080p: mean absolute difference of the model input, label agreement
and accuracy of full@1 through onnxruntime. Writes bench/results/frames.{json,md}.

    python -m bench.frames [--calls 35] [--equivalence 1000]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from agent.cli.launch import running_daemon
from agent.client import Client
from agent.paths import default_zoo_dir
from agent.serving.codec import decode_to_input, open_image
from agent.zoo.preprocess import RESIZE_FILTER
from agent.zoo.sessions import SessionSettings, open_zoo
from bench.common import header, md_table, write_results
from bench.lean_client import LeanClient
from model_zoo import data

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def old_path(body: bytes, size: int) -> np.ndarray:
    """Before this change: the whole frame decoded, then one resize over every source pixel."""
    image = Image.open(io.BytesIO(body)).convert("RGB").resize((size, size), RESIZE_FILTER)
    return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]


def new_path(body: bytes, size: int) -> np.ndarray:
    return decode_to_input(open_image(body), size)


def median_ms(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def bodies() -> dict[str, tuple[bytes, str]]:
    image = Image.fromarray(data.sample(0, "test", 1).image)
    out = {"PNG 128x128": (encode(image, "PNG"), "image/png")}
    for name, wh in SIZES.items():
        out[f"JPEG {name}"] = (encode(image.resize(wh, Image.Resampling.BICUBIC), "JPEG"), "image/jpeg")
    frame = image.resize(SIZES["1080p"], Image.Resampling.BICUBIC)
    out["PNG 1080p"] = (encode(frame, "PNG"), "image/png")
    out["npy uint8 1080p (BGR)"] = (npy(np.asarray(frame)[:, :, ::-1]), "application/x-npy")
    return out


def round_trips(calls: int) -> list[dict[str, Any]]:
    cases = bodies()
    times: dict[str, list[float]] = {k: [] for k in cases}
    decode: dict[str, list[float]] = {k: [] for k in cases}
    model: dict[str, list[float]] = {k: [] for k in cases}
    with running_daemon() as (_, sock), Client(sock) as client:
        client.pin("full@1", 3600, "frames bench: one configuration for every body")
        lean = LeanClient(sock)
        for i in range(calls + 5):  # 5 warm-up rounds
            for name, (body, ctype) in cases.items():
                url = "/v1/classify?channel_order=bgr" if "BGR" in name else "/v1/classify"
                start = time.perf_counter()
                status, _, raw = lean.post(url, body, ctype)
                elapsed = (time.perf_counter() - start) * 1000
                if status != 200:
                    raise RuntimeError(f"{name}: {status} {raw[:200]!r}")
                if i >= 5:
                    answer = json.loads(raw)
                    times[name].append(elapsed)
                    decode[name].append(answer["decode_ms"])
                    model[name].append(answer["compute_ms"])
        lean.close()
    base = float(np.median(times["PNG 128x128"]))
    return [
        {
            "body": name,
            "size_kb": round(len(cases[name][0]) / 1024, 1),
            "round_trip_p50_ms": round(float(np.median(times[name])), 2),
            "vs_png128_ms": round(float(np.median(times[name])) - base, 2),
            "decode_p50_ms": round(float(np.median(decode[name])), 2),
            "model_p50_ms": round(float(np.median(model[name])), 2),
        }
        for name in cases
    ]


def in_process(calls: int) -> list[dict[str, Any]]:
    rows = []
    for name, (body, _) in bodies().items():
        if not name.startswith(("JPEG", "PNG")):
            continue
        old = median_ms(functools.partial(old_path, body, 128), calls)
        new = median_ms(functools.partial(new_path, body, 128), calls)
        rows.append({"body": name, "old_ms": round(old, 2), "new_ms": round(new, 2), "speedup": round(old / new, 2)})
    return rows


def equivalence(count: int, frame: str = "1080p") -> dict[str, Any]:
    """Fast path against the old one on `count` test images upscaled to `frame` JPEG (q 90)."""
    full = open_zoo(default_zoo_dir(), SessionSettings(intra_threads=2), names=["full"]).variants["full"]
    images, labels = data.generate("test", count)
    mads, old_pred, new_pred = [], [], []
    for img in images:
        body = encode(Image.fromarray(img).resize(SIZES[frame], Image.Resampling.BICUBIC), "JPEG")
        old, new = old_path(body, 128), new_path(body, 128)
        mads.append(float(np.abs(old - new).mean()) * 255)
        old_pred.append(int(full.run(old, 1.0).probs.argmax()))
        new_pred.append(int(full.run(new, 1.0).probs.argmax()))
    o, n = np.array(old_pred), np.array(new_pred)
    return {
        "frame": frame,
        "images": count,
        "mad_mean_255": round(float(np.mean(mads)), 3),
        "mad_max_255": round(float(np.max(mads)), 3),
        "label_agreement": round(float((o == n).mean()), 4),
        "accuracy_old": round(float((o == labels).mean()), 4),
        "accuracy_new": round(float((n == labels).mean()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=35)
    ap.add_argument("--equivalence", type=int, default=1000, help="test images for the equivalence check")
    args = ap.parse_args()
    trips = round_trips(args.calls)
    for row in trips:
        print(row)
    local = in_process(args.calls)
    for row in local:
        print(row)
    same = [equivalence(args.equivalence, frame) for frame in ("1080p", "720p")]
    print(same)
    results = {**header(), "round_trips": trips, "in_process": local, "equivalence": same}
    md = (
        f"# Camera frames\n\n{results['machine']}, {results['date']}; daemon with full@1 pinned, one keep-alive "
        f"http.client connection, bodies interleaved, p50 of {args.calls} calls each.\n\n"
        + md_table(
            ["body", "KB", "round trip p50 ms", "vs 128 px PNG ms", "decode p50 ms", "model p50 ms"],
            [list(r.values()) for r in trips],
        )
        + "\n## Decode + resize in process: old path (full decode) vs new (draft, reduce)\n\n"
        + md_table(["body", "old ms", "new ms", "speedup"], [list(r.values()) for r in local])
        + f"\n## Equivalence on {same[0]['images']} test images as JPEG frames (quality 90)\n\n"
        + md_table(
            ["frame", "mean abs diff (/255)", "max per image (/255)", "labels agree", "accuracy old", "accuracy new"],
            [
                [
                    e["frame"],
                    e["mad_mean_255"],
                    e["mad_max_255"],
                    f"{e['label_agreement']:.2%}",
                    f"{e['accuracy_old']:.2%}",
                    f"{e['accuracy_new']:.2%}",
                ]
                for e in same
            ],
        )
    )
    write_results("frames", results, md)


if __name__ == "__main__":
    main()
