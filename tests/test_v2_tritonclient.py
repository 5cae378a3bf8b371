"""The Open Inference Protocol spoken by a client no one here wrote: NVIDIA's tritonclient.http
against the real daemon. tritonclient talks TCP and the daemon listens on a Unix socket only,
so a loopback relay passes the bytes through unchanged."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model_zoo import data
from tests.samples import agreed_index

pytestmark = pytest.mark.daemon  # every test here talks to a daemon subprocess

ADAPTIVE = "surface-defects-vit"
FIXED = "full"  # a fixed configuration: answers comparable call to call
SIZE = 128


class Relay:
    """Loopback TCP to the daemon's Unix socket, byte for byte in both directions: one thread
    accepts, two pump each connection."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed: the relay is done
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(str(self.target))
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="relay-pump", daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:  # one side went away: the other is closed with the relay
            pass

    def close(self) -> None:
        self.server.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture(scope="module")
def client(daemon: Any) -> Iterator[triton.InferenceServerClient]:
    relay = Relay(daemon.socket_path)
    c = triton.InferenceServerClient(f"127.0.0.1:{relay.port}", network_timeout=60)
    try:
        yield c
    finally:
        c.close()
        relay.close()


def image(index: int) -> np.ndarray:
    """Test image `index` (one every configuration labels right: tests/samples.py) as the model's input: FP32 [1, 3, 128, 128], RGB in [0, 1]."""
    img = data.sample(0, "test", index).image
    return (img.transpose(2, 0, 1)[None] / 255).astype(np.float32)


def infer(
    client: triton.InferenceServerClient,
    x: np.ndarray,
    *,
    binary_input: bool,
    binary_output: bool | None,
    model: str = FIXED,
    **kwargs: Any,
) -> triton.InferResult:
    """One infer call; `binary_output` None names no outputs, and tritonclient then asks for
    all of them as binary (`binary_data_output`)."""
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_input)
    outputs = None
    if binary_output is not None:
        outputs = [triton.InferRequestedOutput(n, binary_data=binary_output) for n in ("probabilities", "label")]
    return client.infer(model, [tensor], outputs=outputs, **kwargs)


def labels(result: triton.InferResult) -> list[str]:
    """The label output as text (JSON answers give str, binary ones bytes)."""
    return [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]


def binary_sizes(result: triton.InferResult) -> dict[str, int | None]:
    """Each output's binary_data_size as the answer's JSON gives it (None: sent as JSON data)."""
    return {o["name"]: (o.get("parameters") or {}).get("binary_data_size") for o in result.get_response()["outputs"]}


def test_live_ready_and_metadata_describe_the_input(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(ADAPTIVE) and client.is_model_ready(FIXED, model_version="1")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata(ADAPTIVE)
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    assert [o["shape"] for o in meta["outputs"]] == [[-1, len(data.CLASSES)], [-1]]
    params = meta["parameters"]
    assert (params["input_min"], params["input_max"], params["input_layout"]) == (0.0, 1.0, "NCHW")
    assert params["input_channel_order"] == "RGB" and params["classes"].split(",") == list(data.CLASSES)
    assert params["max_batch_size"] >= 2
    assert client.get_model_metadata(FIXED, model_version="1")["name"] == FIXED


def test_json_infer(client: triton.InferenceServerClient) -> None:
    result = infer(client, image(agreed_index("crazing")), binary_input=False, binary_output=False)
    assert binary_sizes(result) == {"probabilities": None, "label": None}
    assert labels(result) == ["crazing"]
    assert result.as_numpy("probabilities").shape == (1, len(data.CLASSES))
    assert result.get_response()["parameters"]["variant"] == FIXED


def test_binary_input_answers_as_json_input(client: triton.InferenceServerClient) -> None:
    x = image(agreed_index("scratch"))
    as_json = infer(client, x, binary_input=False, binary_output=False)
    as_binary = infer(client, x, binary_input=True, binary_output=False, model_version="1")
    assert labels(as_binary) == labels(as_json) == ["scratch"]
    np.testing.assert_array_equal(as_binary.as_numpy("probabilities"), as_json.as_numpy("probabilities"))


@pytest.mark.parametrize("asked", [True, None], ids=["binary_data", "binary_data_output"])
def test_outputs_asked_as_binary_come_back_binary(client: triton.InferenceServerClient, asked: bool | None) -> None:
    x = image(agreed_index("pitted"))
    as_json = infer(client, x, binary_input=True, binary_output=False)
    as_binary = infer(client, x, binary_input=True, binary_output=asked)
    sizes = binary_sizes(as_binary)
    assert sizes["probabilities"] == 4 * len(data.CLASSES) and sizes["label"] == 4 + len("pitted")
    assert labels(as_binary) == labels(as_json) == ["pitted"]
    np.testing.assert_array_equal(as_binary.as_numpy("probabilities"), as_json.as_numpy("probabilities"))


def test_an_error_is_raised_with_the_daemons_message(client: triton.InferenceServerClient) -> None:
    wrong = np.zeros((1, 3, 10, 10), np.float32)
    with pytest.raises(InferenceServerException) as refused:
        infer(client, wrong, binary_input=True, binary_output=False)
    assert refused.value.status() == "422"
    assert f"an FP32 tensor must have shape [N, 3, {SIZE}, {SIZE}]" in refused.value.message()
    assert "must have shape" in str(refused.value)  # printable: the message is a string
    with pytest.raises(InferenceServerException, match="model 'nope' not found") as missing:
        client.get_model_metadata("nope")
    assert missing.value.status() == "404"
    assert client.is_server_live()  # and it still serves


def test_a_batch_of_two_answers_as_two_single_calls(client: triton.InferenceServerClient) -> None:
    xs = [image(agreed_index("scratch")), image(agreed_index("rolled_in_scale"))]
    singles = [infer(client, x, binary_input=True, binary_output=True) for x in xs]
    batch = infer(client, np.concatenate(xs), binary_input=True, binary_output=True)
    assert batch.as_numpy("probabilities").shape == (2, len(data.CLASSES))
    assert labels(batch) == [labels(s)[0] for s in singles] == ["scratch", "rolled_in_scale"]
    expected = np.concatenate([s.as_numpy("probabilities") for s in singles])
    np.testing.assert_allclose(batch.as_numpy("probabilities"), expected, atol=1e-5)
