"""The HTTP API of the real daemon, over its real Unix socket: answers and every error case,
each error followed by a request that must still succeed."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from agent.client import ClientError
from agent.values import BUDGETS
from agent.zoo.manifest import keep_count
from model_zoo import data
from tests.samples import agreed_index

pytestmark = pytest.mark.daemon  # every test here talks to a daemon subprocess


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def http(daemon):
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(daemon.socket_path)), base_url="http://edge-agent", timeout=30
    ) as c:
        yield c


@pytest.fixture(scope="module")
def good_png() -> bytes:
    return png_bytes(Image.fromarray(data.sample(0, "test", agreed_index("scratch")).image))


def assert_still_serving(http: httpx.Client, good_png: bytes) -> None:
    r = http.post("/v1/classify", content=good_png, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["label"] in data.CLASSES


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code and body["error"]["message"]


def assert_v2_error(r: httpx.Response, status: int, text: str) -> None:
    """A v2 route's error: the Open Inference Protocol's body, {"error": "<message>"}."""
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and text in r.json()["error"], r.text


def test_classify_png_names_label_scores_config_and_times(daemon, good_png: bytes) -> None:
    with daemon.client() as client:
        a = client.classify(good_png, "image/png")
    assert a["label"] == "scratch"
    # idle: a configuration of the most accurate tier (full@1 and int8@1 tie on test), its tokens as the budget says
    assert a["variant"] in ("full", "int8") and a["budget"] in BUDGETS
    assert a["kept_tokens"] == keep_count(a["budget"], 256)
    assert len(a["top"]) == 3 and a["top"][0]["label"] == a["label"]
    assert a["queue_ms"] >= 0 and a["compute_ms"] > 0
    assert "attention" not in a


def test_classify_jpeg(http: httpx.Client) -> None:
    jpeg = png_bytes(Image.fromarray(data.sample(0, "test", 3).image), "JPEG")  # pitted
    r = http.post("/v1/classify", content=jpeg, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["label"] == "pitted"


def test_classify_npy_tensor(daemon) -> None:
    img = data.sample(0, "test", 4).image  # rolled-in scale
    tensor = img.transpose(2, 0, 1).astype(np.float32) / 255
    with daemon.client() as client:
        assert client.classify(tensor)["label"] == "rolled_in_scale"


def test_explain_returns_the_attention_grid(http: httpx.Client, good_png: bytes) -> None:
    r = http.post("/v1/classify?explain=true", content=good_png, headers={"content-type": "image/png"})
    grid = r.json()["attention"]
    assert len(grid) == 16 and all(len(row) == 16 for row in grid)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (333, 97), 90),
        Image.new("RGBA", (64, 64), (200, 10, 10, 128)),
        Image.fromarray(np.full((40, 50), 30000, dtype=np.uint16)),
    ],
    ids=["gray", "rgba", "16-bit"],
)
def test_any_image_mode_is_converted_not_rejected(http: httpx.Client, image: Image.Image) -> None:
    r = http.post("/v1/classify", content=png_bytes(image), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text


def test_v2_health_server_and_model_metadata(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/v2").json()["name"] == "edge-agent"
    meta = http.get("/v2/models/surface-defects-vit").json()
    assert meta["inputs"][0]["shape"] == [-1, 3, 128, 128]
    assert meta["parameters"]["classes"] == ",".join(data.CLASSES)
    assert http.get("/v2/models/lowres").json()["inputs"][0]["shape"] == [-1, 3, 64, 64]
    assert http.get("/v2/models/int8/ready").json() == {"name": "int8", "ready": True}


def test_v2_infer_json_tensor(http: httpx.Client) -> None:
    img = data.sample(0, "test", 2).image  # crazing
    x = img.transpose(2, 0, 1)[None].astype(np.float32) / 255
    body = {"inputs": [{"name": "image", "shape": [1, 3, 128, 128], "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = http.post("/v2/models/surface-defects-vit/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["label"]["data"] == ["crazing"]
    assert np.isclose(sum(out["probabilities"]["data"]), 1.0, atol=1e-4)


def test_v2_infer_binary_tensor_extension_on_a_fixed_variant(http: httpx.Client) -> None:
    img = np.asarray(Image.fromarray(data.sample(0, "test", 1).image).resize((64, 64), Image.Resampling.BILINEAR))
    x = (img.transpose(2, 0, 1)[None].astype("<f4") / 255).tobytes()
    header = httpx.Request(
        "POST",
        "http://x",
        json={
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 3, 64, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(x)},
                }
            ],
            "parameters": {"token_budget": 0.5},
        },
    ).content
    r = http.post(
        "/v2/models/lowres/infer",
        content=header + x,
        headers={"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["variant"] == "lowres" and r.json()["parameters"]["token_budget"] == 0.5


def test_status_and_metrics(daemon, good_png: bytes) -> None:
    with daemon.client() as client:
        client.classify(good_png, "image/png")  # the status window spans the last 10 s only
        st = client.status()
        text = client.metrics()
    assert {"full", "pruned", "int8", "lowres"} <= set(st["variants"])
    # The controller may have stepped down from full@1 if this machine is busy.
    assert st["ready"] and st["config"]["current"].split("@")[0] in st["variants"]
    assert st["window"]["count"] >= 1 and st["window"]["p95_ms"] > 0
    assert (
        "edge_agent_config_switches_total" in text
        and 'edge_agent_requests_total{route="/v1/classify",status="200"}' in text
    )


# -- errors ------------------------------------------------------------------------------------------


def test_empty_body_is_400(http: httpx.Client, good_png: bytes) -> None:
    assert_error(http.post("/v1/classify", content=b"", headers={"content-type": "image/png"}), 400, "bad_input")
    assert_still_serving(http, good_png)


def test_truncated_png_is_400(http: httpx.Client, good_png: bytes) -> None:
    r = http.post("/v1/classify", content=good_png[: len(good_png) // 2], headers={"content-type": "image/png"})
    assert_error(r, 400, "bad_input")
    assert_still_serving(http, good_png)


def test_garbage_image_is_400(http: httpx.Client, good_png: bytes) -> None:
    assert_error(
        http.post("/v1/classify", content=b"not an image at all", headers={"content-type": "image/jpeg"}),
        400,
        "bad_input",
    )
    assert_still_serving(http, good_png)


def test_unsupported_content_type_is_415(http: httpx.Client, good_png: bytes) -> None:
    assert_error(
        http.post("/v1/classify", content=b"{}", headers={"content-type": "application/json"}),
        415,
        "unsupported_media_type",
    )
    assert_still_serving(http, good_png)


def test_body_over_the_limit_is_413_without_reading_it(daemon, http: httpx.Client, good_png: bytes) -> None:
    # Declare 1 GiB but send only the headers: the daemon must answer at once, not wait for the body.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket_path))
        s.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1073741824\r\n\r\n"
        )
        head = s.recv(65536).decode()
    # The status and JSON headers come at once. The body can be lost: uvicorn closes a connection that still
    # declares a gigabyte unread, and the unread data may reset it before the body is flushed (seen on CI).
    assert head.startswith("HTTP/1.1 413") and "content-type: application/json" in head.lower()
    big = b"\x89PNG" + b"0" * (9 * 1024 * 1024)
    assert_error(
        http.post("/v1/classify", content=big, headers={"content-type": "image/png"}), 413, "payload_too_large"
    )
    assert_still_serving(http, good_png)


def test_npy_of_wrong_shape_or_dtype_is_422(http: httpx.Client, good_png: bytes) -> None:
    for arr in (np.zeros((5, 5), np.float32), np.zeros((1, 4, 8, 8), np.float32), np.zeros((3, 8, 8), np.float64)):
        buf = io.BytesIO()
        np.save(buf, arr)
        assert_error(
            http.post("/v1/classify", content=buf.getvalue(), headers={"content-type": "application/x-npy"}),
            422,
            "invalid_tensor",
        )
    assert_still_serving(http, good_png)


def test_v2_tensor_of_wrong_shape_is_422(http: httpx.Client, good_png: bytes) -> None:
    body = {"inputs": [{"name": "image", "shape": [1, 3, 10, 10], "datatype": "FP32", "data": [0.0] * 300}]}
    assert_v2_error(http.post("/v2/models/full/infer", json=body), 422, "must have shape [N, 3, 128, 128]")
    body = {"inputs": [{"name": "image", "shape": [1, 3, 128, 128], "datatype": "FP32", "data": [0.0] * 7}]}
    assert_v2_error(http.post("/v2/models/full/infer", json=body), 422, "data does not hold 49152 numbers")
    assert_still_serving(http, good_png)


def test_unknown_model_is_404(http: httpx.Client, good_png: bytes) -> None:
    assert_v2_error(http.get("/v2/models/nope"), 404, "model 'nope' not found")
    assert_v2_error(http.post("/v2/models/nope/infer", json={}), 404, "model 'nope' not found")
    assert_error(http.get("/no/such/route"), 404, "not_found")
    assert_still_serving(http, good_png)


def test_unmeetable_deadline_is_shed_with_503_and_retry_after(http: httpx.Client, good_png: bytes) -> None:
    r = http.post("/v1/classify?deadline_ms=0.01", content=good_png, headers={"content-type": "image/png"})
    assert_error(r, 503, "overloaded")
    assert int(r.headers["retry-after"]) >= 1
    assert_still_serving(http, good_png)


def test_invalid_query_is_422_json(http: httpx.Client, good_png: bytes) -> None:
    for query in ("deadline_ms=-3", "deadline_ms=soon", "explain=perhaps", "explain="):
        r = http.post(f"/v1/classify?{query}", content=good_png, headers={"content-type": "image/png"})
        assert_error(r, 422, "invalid_request")
        assert r.json()["error"]["message"].startswith(f"query.{query.split('=')[0]}:")
    assert_still_serving(http, good_png)


def test_classify_takes_only_post(http: httpx.Client, good_png: bytes) -> None:
    assert_error(http.get("/v1/classify"), 405, "method_not_allowed")
    assert_still_serving(http, good_png)


def test_pin_unpin_by_an_allowed_uid(daemon, good_png: bytes) -> None:
    with daemon.client() as client:
        pinned = client.pin("int8@0.5", 60, "test")
        assert pinned["config"] == "int8@0.5"
        answer = client.classify(good_png, "image/png")
        assert (answer["variant"], answer["budget"]) == ("int8", 0.5)
        assert client.status()["config"]["pinned"]["config"] == "int8@0.5"
        with pytest.raises(ClientError) as bad:
            client.pin("nosuch@1", 60)
        assert bad.value.status == 404
        with pytest.raises(ClientError) as bad_budget:
            client.pin("full@0.33", 60)
        assert bad_budget.value.status == 400
        assert client.unpin()["unpinned"] is True
        assert client.status()["config"]["pinned"] is None


def test_curl_style_raw_http_works(daemon, sample_png: Path) -> None:
    import subprocess

    out = subprocess.run(
        [
            "curl",
            "-s",
            "--unix-socket",
            str(daemon.socket_path),
            "-H",
            "Content-Type: image/png",
            "--data-binary",
            f"@{sample_png}",
            "http://localhost/v1/classify",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert '"label":"scratch"' in out.stdout


def test_bytes_that_are_not_http_get_a_json_400_and_the_daemon_keeps_serving(
    daemon, http: httpx.Client, good_png: bytes
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket_path))
        s.sendall(b"\x00\x01GARBAGE / HTTP/9.9\r\n\r\n")
        raw = b""
        while chunk := s.recv(65536):  # the daemon closes the connection after answering
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "invalid_http"
    assert_still_serving(http, good_png)
