"""The privacy promise of docs/security.md, tested on the real daemon: image bytes, pixel values,
tensor values and attention maps leave the daemon only in the answer to the request that sent
them. The daemon runs with debug logging and every request logged; requests carry a
recognisable pixel pattern, distinctive float values and a byte marker (in a PNG text chunk,
after a PNG's end, after an .npy's data, in malformed bodies, in a v2 request's id), errors are
provoked (malformed bodies, wrong shapes, a truncated image, a bad binary tensor), then every
log line (stdout and stderr, up to a crash dump), the sd_notify messages, /metrics, /v1/status, a
recorded trace (`edge-agent telemetry record`) and every file under the state and runtime
directories are searched for the marker and the values' text forms."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.daemon import REPO, DaemonProcess, eventually

pytestmark = pytest.mark.daemon

MARKER = b"PRIVACY-MARKER-9q7ZKx"
COLOURS = [(17, 203, 99), (211, 7, 149), (83, 241, 29)]
NPY_VALUES = np.array([0.12345679, 0.87654321, 0.24681357, 0.97531246], np.float32)
V2_VALUES = np.array([0.31415927, 0.27182818, 0.16180339, 0.14142136], np.float32)


# -- what is sent ----------------------------------------------------------------------------------


def pattern_png(size: int = 96) -> bytes:
    """Stripes of three distinctive colours, the marker in a tEXt chunk and after IEND."""
    pixels = np.zeros((size, size, 3), np.uint8)
    for i in range(size):
        pixels[i, :] = COLOURS[i % 3]
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", MARKER.decode())
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue() + MARKER


def tiled(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.resize(values, shape).astype(values.dtype)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def v2_json(values: np.ndarray, shape: list[int], request_id: str) -> bytes:
    tensor = {"name": "image", "datatype": "FP32", "shape": shape, "data": tiled(values, tuple(shape)).ravel().tolist()}
    return json.dumps({"id": request_id, "inputs": [tensor]}).encode()


# -- what is searched for ---------------------------------------------------------------------------


def float_forms(values: np.ndarray) -> set[str]:
    """Text forms a float could take in a log line or file: float32 and float64 reprs, 7 and 8
    significant digits (enough digits that no timestamp or latency figure matches by chance),
    and runs of consecutive values as a JSON list, a Python list and numpy print them."""
    forms: set[str] = set()
    for v in values.tolist():
        f32 = np.float32(v)
        forms |= {str(f32), repr(float(f32)), f"{v:.7g}", f"{v:.8g}"}
    run = values[:3]
    forms |= {", ".join(str(np.float32(x)) for x in run), ",".join(repr(float(x)) for x in run)}
    forms.add(" ".join(str(np.float32(x)) for x in run))
    return {f for f in forms if sum(c.isdigit() for c in f) >= 7}


def pixel_forms() -> set[str]:
    forms = set()
    for r, g, b in COLOURS:
        forms |= {f"{r}, {g}, {b}", f"[{r:3d} {g:3d} {b:3d}]", f"{r},{g},{b}"}
        forms |= float_forms(np.array([r / 255, g / 255, b / 255], np.float32))
        forms |= {repr(c / 255) for c in (r, g, b) if len(repr(c / 255)) > 8}
    return forms


def marker_forms() -> set[bytes]:
    forms = {MARKER, MARKER.hex().encode(), MARKER.hex().upper().encode(), repr(MARKER).encode()}
    for pad in (b"", b"x", b"xx"):  # base64 of the marker at each alignment in a longer run
        encoded = base64.b64encode(pad + MARKER)
        forms.add(encoded[len(pad) * 2 : -4] if pad else encoded[:-4])
    return forms


def attention_forms(attention: list[list[float]]) -> set[str]:
    """Runs of four consecutive values of an attention map row, as JSON and Python print them:
    a map in a log would show such runs; a single 5-decimal value could match anything."""
    forms: set[str] = set()
    for row in attention:
        for i in range(0, len(row) - 3, 4):
            run = row[i : i + 4]
            if len({round(x, 4) for x in run}) > 1:
                forms |= {", ".join(repr(x) for x in run), ",".join(repr(x) for x in run)}
    return forms


def leaks(blob: bytes, texts: set[str]) -> list[str]:
    found = [repr(m) for m in marker_forms() if m in blob]
    return found + [t for t in texts if t.encode() in blob]


# -- a raw HTTP client on the Unix socket (for headers the Client does not send) --------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=60)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)


def post(sock: Path, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = _UnixConnection(sock)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- the test ------------------------------------------------------------------------------------------


def requests(png: bytes) -> list[tuple[str, str, bytes, dict[str, str], int]]:
    """(what, path, body, headers, expected status): answered ones and provoked errors."""
    good_npy = npy(tiled(NPY_VALUES, (3, 64, 64)))
    bad_header = b"\x93NUMPY\x01\x00" + (b"{'descr': '" + MARKER + b"', 'fortran_order': False, 'shape': (3,)}")
    png_type, npy_type, json_type = (
        {"Content-Type": "image/png"},
        {"Content-Type": "application/x-npy"},
        {"Content-Type": "application/json"},
    )
    v2 = "/v2/models/surface-defects-vit/infer"
    v2_good = v2_json(V2_VALUES, [1, 3, 128, 128], MARKER.decode())
    binary = tiled(V2_VALUES, (1, 3, 128, 128)).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "FP32", "shape": [1, 3, 128, 128], "parameters": {"binary_data_size": 17}}
            ]
        }
    ).encode()
    return [
        ("png", "/v1/classify?explain=true", png, png_type, 200),
        ("npy", "/v1/classify?explain=true", good_npy, npy_type, 200),
        ("npy + trailing marker", "/v1/classify", good_npy + MARKER, npy_type, 400),
        ("v2 json", v2, v2_good, json_type, 200),
        (
            "v2 binary",
            v2,
            header.replace(b"17", str(len(binary)).encode()) + binary,
            {
                **json_type,
                "Inference-Header-Content-Length": str(len(header.replace(b"17", str(len(binary)).encode()))),
            },
            200,
        ),
        ("truncated png", "/v1/classify", png[: len(png) // 2], png_type, 400),
        ("marker as png", "/v1/classify", MARKER * 50, png_type, 400),
        ("marker as jpeg", "/v1/classify", b"\xff\xd8\xff\xe0" + MARKER * 50, {"Content-Type": "image/jpeg"}, 400),
        ("npy header with marker", "/v1/classify", bad_header, npy_type, 400),
        ("npy wrong shape", "/v1/classify", npy(tiled(NPY_VALUES, (5, 7))), npy_type, 422),
        ("npy wrong dtype", "/v1/classify", npy(tiled(NPY_VALUES, (3, 8, 8)).astype(np.float64)), npy_type, 422),
        ("npy truncated", "/v1/classify", npy(tiled(NPY_VALUES, (3, 4, 4)))[:-8], npy_type, 400),
        ("v2 malformed json", v2, b'{"id": "' + MARKER + b'", "inputs": [{"data": [0.31415927, 0.2718', json_type, 400),
        ("v2 wrong shape", v2, v2_json(V2_VALUES, [1, 3, 16, 16], MARKER.decode()), json_type, 422),
        ("v2 marker datatype", v2, v2_good.replace(b'"FP32"', b'"' + MARKER + b'"'), json_type, 422),
        (
            "v2 bad binary size",
            v2,
            header + binary[:64] + MARKER,
            {
                **json_type,
                "Inference-Header-Content-Length": str(len(header)),
            },
            422,
        ),
        ("v2 nan", v2, v2_good.replace(b"0.31415927", b"NaN", 1), json_type, 400),
    ]


def test_no_pixels_tensors_bytes_or_attention_leave_except_in_their_answer(tmp_path: Path) -> None:
    png = pattern_png()
    d = DaemonProcess(
        tmp_path / "d",
        env={
            "EDGE_AGENT_LOG_LEVEL": "debug",
            "EDGE_AGENT_REQUEST_LOG_SAMPLE": "1.0",
            "EDGE_AGENT_IDLE_TIMEOUT_S": "0.5",  # a kept-alive connection times out: a debug event
            "EDGE_AGENT_WARMUP_RUNS": "0",
            "PYTHONFAULTHANDLER": "1",  # the crash at the end dumps every thread's stack
        },
    ).start()
    texts = float_forms(NPY_VALUES) | float_forms(V2_VALUES) | pixel_forms()
    answered: dict[str, bytes] = {}
    try:
        sent = requests(png)
        for what, path, body, headers, expected in sent:
            status, answer = post(d.socket_path, path, body, headers)
            assert status == expected, (what, status, answer[:300])
            answered[what] = answer
        attention = json.loads(answered["png"])["attention"] + json.loads(answered["npy"])["attention"]
        texts |= attention_forms(attention)
        assert len(attention_forms(attention)) > 10
        # The search finds what is there: the v2 answer echoes the request's id (its own answer).
        assert leaks(answered["v2 json"], set()) and leaks(json.dumps(attention).encode(), texts)

        with d.client() as c:
            c.pin("int8@0.5", 600, "privacy test")  # a state file (pin.json) written while requests came
            c.classify(png, content_type="image/png")
            status_text = json.dumps(c.status()).encode()
            metrics = c.metrics().encode()
            # A kept-alive connection left idle: its timeout is logged at debug level.
            eventually(lambda: '"phase": "keepalive"' in d.log(), 30, "a debug event in the log")
        trace = tmp_path / "trace.jsonl"
        subprocess.run(
            [sys.executable, "-m", "agent", "telemetry", "record", "--out", str(trace), "--seconds", "1",
             "--interval", "0.25", "--socket", str(d.socket_path)],
            cwd=REPO, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        assert '"observed"' in trace.read_text()  # the daemon's view was recorded
        assert d.proc is not None
        os.kill(d.proc.pid, signal.SIGABRT)  # a crash: faulthandler writes its dump to stderr
        d.proc.wait(60)
    finally:
        d.close()
    log = d.log_path.read_bytes()
    assert b"Fatal Python error" in log and b'"event": "request"' in log
    assert log.count(b'"event": "request"') >= len(sent)
    assert b'"level": "debug"' in log

    assert leaks(log, texts) == [], "the log (stdout, stderr, crash dump)"
    assert leaks("\n".join(d.messages).encode(), texts) == [], "sd_notify messages"
    assert leaks(metrics, texts) == [], "/metrics"
    assert leaks(status_text, texts) == [], "/v1/status"
    assert leaks(trace.read_bytes(), texts) == [], "the recorded trace"
    files = [p for p in d.workdir.rglob("*") if p.is_file() and not p.is_symlink() and p != d.log_path]
    assert any(p.name == "pin.json" for p in files), files  # the state directory was written to
    for path in files:
        assert leaks(path.read_bytes(), texts) == [], path
