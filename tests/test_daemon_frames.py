"""Camera frames through the real daemon: uint8 frames as camera code holds them (RGB, BGR),
a region of interest, the v2 UINT8 form, and decode time reported apart from model time."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from model_zoo import data

pytestmark = pytest.mark.daemon


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@pytest.fixture(scope="module")
def http(daemon):
    with daemon.client() as client:
        client.pin("full@1", 3600, "frames tests: one configuration for every request")
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(daemon.socket_path)), base_url="http://edge-agent", timeout=30
    ) as c:
        yield c


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """A test image (a scratch) upscaled to 640x480, as a camera frame in RGB."""
    image = Image.fromarray(data.sample(0, "test", 1).image)
    return np.asarray(image.resize((640, 480), Image.Resampling.BICUBIC))


def classify(http: httpx.Client, body: bytes, ctype: str, **params: str) -> dict:
    r = http.post("/v1/classify", content=body, headers={"content-type": ctype}, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def scores(answer: dict) -> dict[str, float]:
    return {t["label"]: t["score"] for t in answer["top"]}


def assert_same(a: dict, b: dict) -> None:
    assert a["label"] == b["label"]
    sa, sb = scores(a), scores(b)
    assert sa.keys() == sb.keys()
    for label in sa:
        assert abs(sa[label] - sb[label]) <= 1e-3, (label, sa[label], sb[label])


def test_uint8_frames_in_rgb_and_bgr_answer_as_the_png(http: httpx.Client, frame: np.ndarray) -> None:
    png = classify(http, encode(Image.fromarray(frame)), "image/png")
    rgb = classify(http, npy(frame), "application/x-npy")
    bgr = classify(http, npy(np.ascontiguousarray(frame[:, :, ::-1])), "application/x-npy", channel_order="bgr")
    assert_same(rgb, png)
    assert_same(bgr, png)
    wrong = classify(http, npy(np.ascontiguousarray(frame[:, :, ::-1])), "application/x-npy")
    assert scores(wrong) != scores(png), "an unflipped BGR frame should not look like the RGB one"


def test_roi_answers_as_the_cropped_region_sent_alone(http: httpx.Client, frame: np.ndarray) -> None:
    x, y, w, h = 120, 40, 400, 400
    crop = classify(http, encode(Image.fromarray(frame[y : y + h, x : x + w])), "image/png")
    from_png = classify(http, encode(Image.fromarray(frame)), "image/png", roi=f"{x},{y},{w},{h}")
    from_npy = classify(http, npy(frame), "application/x-npy", roi=f"{x},{y},{w},{h}")
    assert_same(from_png, crop)
    assert_same(from_npy, crop)


def test_roi_outside_the_frame_is_422_naming_the_frame(http: httpx.Client, frame: np.ndarray) -> None:
    r = http.post(
        "/v1/classify",
        content=encode(Image.fromarray(frame), "JPEG"),
        headers={"content-type": "image/jpeg"},
        params={"roi": "600,0,100,100"},
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "roi_outside_frame" and "640x480 frame" in error["message"]
    r = http.post(
        "/v1/classify", content=npy(frame), headers={"content-type": "application/x-npy"}, params={"roi": "0,400,10,81"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "roi_outside_frame"
    r = http.post(
        "/v1/classify", content=npy(frame), headers={"content-type": "application/x-npy"}, params={"roi": "1,2,3"}
    )
    assert r.status_code == 422 and "x,y,w,h" in r.text
    r = http.post(
        "/v1/classify",
        content=encode(Image.fromarray(frame)),
        headers={"content-type": "image/png"},
        params={"channel_order": "bgr"},
    )
    assert r.status_code == 400 and "channel_order applies to .npy" in r.text
    classify(http, npy(frame), "application/x-npy")  # still serving


def test_v2_uint8_frame_answers_as_the_png(http: httpx.Client, frame: np.ndarray) -> None:
    small = frame[::4, ::4]  # 160x120: a JSON body of reasonable size
    png = classify(http, encode(Image.fromarray(np.ascontiguousarray(small))), "image/png")
    body = {
        "inputs": [{"name": "image", "shape": [1, *small.shape], "datatype": "UINT8", "data": small.ravel().tolist()}],
        "parameters": {"channel_order": "rgb"},
    }
    r = http.post("/v2/models/full/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    probs = np.array(out["outputs"][0]["data"])
    assert out["outputs"][1]["data"] == [png["label"]]
    assert abs(probs.max() - png["score"]) <= 1e-3
    assert out["parameters"]["decode_ms"] >= 0
    body["inputs"][0]["shape"] = [small.shape[0], small.shape[1], 4]
    r = http.post("/v2/models/full/infer", json=body)
    assert r.status_code == 422 and "UINT8 frame must have shape" in r.text


def test_decode_and_model_time_are_reported_apart(http: httpx.Client, frame: np.ndarray) -> None:
    big = Image.fromarray(frame).resize((3840, 2160), Image.Resampling.BILINEAR)
    answers = [classify(http, encode(big, "JPEG"), "image/jpeg") for _ in range(3)]
    assert all(a["decode_ms"] > 0 and a["compute_ms"] > 0 for a in answers)
    status = http.get("/v1/status").json()
    assert status["decode"]["count"] >= 3 and status["decode"]["p50_ms"] > 0
    metrics = http.get("/metrics").text
    assert "edge_agent_decode_seconds_count" in metrics
    assert 'edge_agent_model_seconds_count{variant="full"}' in metrics
