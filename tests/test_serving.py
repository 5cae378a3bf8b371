"""The serving layer in process: the app against a fake runner (no sessions, no socket), and the
protocol driven the way uvicorn tests its own, with a mock transport and a mock loop whose
timers the test fires: deadlines are deterministic, nothing sleeps."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import uvicorn
from PIL import Image
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.server import ServerState

from agent.errors import InvalidTensor, Overloaded
from agent.serving.admission import Clock, LatencyWindow, Ticket
from agent.serving.app import create_app
from agent.serving.budget import ByteBudget
from agent.serving.gate import GateLimits, RequestGate
from agent.serving.health import VariantHealth
from agent.serving.metrics import Metrics
from agent.serving.protocol import AgentProtocol, ConnectionLimits, protocol_class
from agent.serving.routes.v2 import MAX_BATCH
from agent.serving.runner import Outcome, Prepare
from agent.serving.state import AppState
from agent.settings import Settings
from agent.values import Config, Pin
from agent.zoo.manifest import Preprocess, TensorSpec
from agent.zoo.sessions import Prediction

SIZE = 8
CLASSES = ["ok", "scratch", "crack"]
VARIANT = SimpleNamespace(
    name="full",
    spec=SimpleNamespace(
        name="full",
        resolution=SIZE,
        tokens=16,
        budgets=(1.0, 0.5),
        preprocess=Preprocess(),
        attention_name="attention",
        token_input="token_keep",
        inputs=[TensorSpec(name="image", dtype="tensor(float)", shape=["batch", 3, SIZE, SIZE])],
    ),
)


class FakeRunner:
    """What the routes use of a Runner: admission is recorded, a run prepares its input (so
    decoding really happens) and answers fixed scores."""

    def __init__(self) -> None:
        self.current = Config("full", 1.0)
        self.reason, self.since, self.pin_state = "initial configuration", 0.0, None
        self.history: list[Any] = []
        self.inflight, self.capacity, self.workers = 0, 3, 1
        self.window, self.clock, self.health = LatencyWindow(10.0), Clock(), VariantHealth()
        self.decode_window = LatencyWindow(10.0)
        self.admitted: list[Ticket] = []
        self.released: list[Ticket] = []
        self.refuse: Exception | None = None
        self.fail: Exception | None = None
        self.inputs: list[np.ndarray] = []

    def admit(self, deadline_ms: float | None = None, fixed: Config | None = None) -> Ticket:
        if self.refuse is not None:
            raise self.refuse
        ticket = Ticket(fixed, 0.0, None)
        self.admitted.append(ticket)
        return ticket

    def release(self, ticket: Ticket) -> None:
        self.released.append(ticket)

    async def run(self, ticket: Ticket, prepare: Prepare) -> Outcome:
        x = prepare(VARIANT)  # type: ignore[arg-type]
        self.inputs.append(x)
        if self.fail is not None:
            raise self.fail
        probs = np.repeat(np.array([[0.1, 0.7, 0.2]], np.float32), len(x), axis=0)  # one row an image
        return Outcome(ticket.fixed or self.current, Prediction(probs, None, 1.0, 16), 0.5, 2.0)

    def validate(self, config: Config) -> Config:
        return config

    def pin(self, config: Config, seconds: float, reason: str) -> Pin:
        return Pin(config, 1000.0 + seconds, reason)

    def unpin(self, reason: str) -> bool:
        return False


def as_peer(app: ASGIApp, uid: int | None) -> ASGIApp:
    """The app as the protocol hands it a request: the peer's uid in scope["state"]."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if uid is not None:
            scope["state"] = {"peer_uid": uid}
        await app(scope, receive, send)

    return wrapped


@pytest.fixture
def state(tmp_path: Path) -> AppState:
    zoo = SimpleNamespace(
        classes=CLASSES,
        manifest=SimpleNamespace(name="edge"),
        variants={"full": VARIANT},
        failures={},
        directory=tmp_path,
    )
    settings = Settings(socket=tmp_path / "s.sock", zoo=tmp_path, max_body_bytes=64 * 1024)
    st = AppState(settings=settings, zoo=zoo, runner=FakeRunner(), metrics=Metrics())  # type: ignore[arg-type]
    st.ready = True
    return st


@pytest.fixture
def runner(state: AppState) -> FakeRunner:
    return state.runner  # type: ignore[return-value]


class Client:
    """Requests to the app in process (httpx's ASGI transport), one event loop per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url="http://edge-agent") as http:
                return await http.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


def client(state: AppState, uid: int | None = None) -> Client:
    return Client(as_peer(create_app(state), uid))


def png(size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


# -- the app against a fake runner ----------------------------------------------------------------


def test_classify_admits_once_after_the_body_and_answers_label_scores_and_config(
    state: AppState, runner: FakeRunner
) -> None:
    answer = client(state).post("/v1/classify", content=png(), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["label"], body["variant"], body["budget"]) == ("scratch", "full", 1.0)
    assert [t["label"] for t in body["top"]] == ["scratch", "crack", "ok"]
    assert len(runner.admitted) == 1 and runner.released == []
    assert runner.inputs[0].shape == (1, 3, SIZE, SIZE)  # the image was fitted to the variant


def test_classify_accepts_a_npy_tensor(state: AppState, runner: FakeRunner) -> None:
    buf = io.BytesIO()
    np.save(buf, np.full((3, 4, 4), 0.5, np.float32))
    answer = client(state).post("/v1/classify", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert answer.status_code == 200 and runner.inputs[0].shape == (1, 3, SIZE, SIZE)


def test_an_unsupported_media_type_is_refused_before_admission(state: AppState, runner: FakeRunner) -> None:
    answer = client(state).post("/v1/classify", content=b"x", headers={"Content-Type": "text/plain"})
    assert error(answer) == (415, "unsupported_media_type") and runner.admitted == []


def test_a_refused_admission_is_503_with_retry_after(state: AppState, runner: FakeRunner) -> None:
    runner.refuse = Overloaded("queue full (3 requests admitted)", retry_after_s=0.2)
    answer = client(state).post("/v1/classify", content=png(), headers={"Content-Type": "image/png"})
    assert error(answer) == (503, "overloaded") and answer.headers["Retry-After"] == "1"


def test_the_classify_lane_counts_answers_refusals_and_metrics_as_every_route(
    state: AppState, runner: FakeRunner
) -> None:
    """Classify skips FastAPI (agent.serving.app): its answers must still reach the same metrics."""
    app = client(state)
    assert app.post("/v1/classify", content=png(), headers={"Content-Type": "image/png"}).status_code == 200
    runner.refuse = Overloaded("queue full (3 requests admitted)", retry_after_s=0.2)
    assert error(app.post("/v1/classify", content=png(), headers={"Content-Type": "image/png"}))[0] == 503
    assert error(app.post("/v1/classify?deadline_ms=-1", content=png(), headers={"Content-Type": "image/png"})) == (
        422,
        "invalid_request",
    )
    text = state.metrics.render().decode()
    for status in ("200", "503", "422"):
        assert f'edge_agent_requests_total{{route="/v1/classify",status="{status}"}} 1.0' in text, status
    assert 'edge_agent_errors_total{code="overloaded"} 1.0' in text
    assert 'edge_agent_shed_total{reason="queue"} 1.0' in text
    assert 'edge_agent_model_seconds_count{variant="full"} 1.0' in text  # observed once answered


def test_a_body_that_does_not_decode_is_400_and_gives_its_place_back(state: AppState, runner: FakeRunner) -> None:
    answer = client(state).post("/v1/classify", content=b"not a png", headers={"Content-Type": "image/png"})
    assert error(answer) == (400, "bad_input")
    assert runner.released == runner.admitted and len(runner.admitted) == 1


def test_an_invalid_query_is_422_naming_the_parameter(state: AppState) -> None:
    answer = client(state).post("/v1/classify?deadline_ms=-1", content=png(), headers={"Content-Type": "image/png"})
    assert error(answer) == (422, "invalid_request")
    assert answer.json()["error"]["message"].startswith("query.deadline_ms:")


def test_a_body_over_the_limit_is_413_before_admission(state: AppState, runner: FakeRunner) -> None:
    answer = client(state).post("/v1/classify", content=b"x" * (65 * 1024), headers={"Content-Type": "image/png"})
    assert error(answer) == (413, "payload_too_large") and runner.admitted == []


def test_an_unexpected_failure_is_a_logged_500_envelope(state: AppState, runner: FakeRunner) -> None:
    runner.fail = RuntimeError("boom")
    answer = client(state).post("/v1/classify", content=png(), headers={"Content-Type": "image/png"})
    assert error(answer) == (500, "internal") and state.last_error == "RuntimeError: boom"


def test_unknown_routes_and_methods_answer_the_envelope(state: AppState) -> None:
    assert error(client(state).get("/nope")) == (404, "not_found")
    assert error(client(state).get("/v1/classify")) == (405, "method_not_allowed")


def v2_request(shape: list[int], data: list[float] | None = None) -> dict[str, Any]:
    count = int(np.prod(shape))
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": shape, "data": data or [0.5] * count}]}


def test_v2_infer_runs_a_json_tensor_on_a_named_variant(state: AppState, runner: FakeRunner) -> None:
    answer = client(state).post("/v2/models/full/infer", json=v2_request([1, 3, SIZE, SIZE]))
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["label"]["data"] == ["scratch"] and runner.admitted[0].fixed == Config("full", 1.0)


def test_v2_binary_tensor_extension(state: AppState, runner: FakeRunner) -> None:
    tensor = np.full((1, 3, SIZE, SIZE), 0.25, np.float32)
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [1, 3, SIZE, SIZE],
                    "parameters": {"binary_data_size": tensor.nbytes},
                }
            ]
        }
    )
    answer = client(state).post(
        "/v2/models/edge/infer",
        content=head + tensor.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 200, answer.text
    assert runner.admitted[0].fixed is None and float(runner.inputs[0].mean()) == pytest.approx(0.25)


def v2_error(response: Any) -> tuple[int, str]:
    """(status, message) of a v2 error, whose body must be the protocol's `{"error": str}`."""
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return response.status_code, body["error"]


def split_binary(answer: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(JSON part, each binary output's bytes) of a v2 answer with the binary tensor extension."""
    assert answer.headers["content-type"] == "application/octet-stream"
    length = int(answer.headers["inference-header-content-length"])
    head, rest = orjson.loads(answer.content[:length]), answer.content[length:]
    parts = {}
    for output in head["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            parts[output["name"]], rest = rest[:size], rest[size:]
    assert rest == b""
    return head, parts


def test_v2_tensor_of_the_wrong_shape_is_422_and_gives_its_place_back(state: AppState, runner: FakeRunner) -> None:
    status, message = v2_error(client(state).post("/v2/models/full/infer", json=v2_request([1, 3, 4, 4])))
    assert status == 422 and f"must have shape [N, 3, {SIZE}, {SIZE}] (N from 1 to {MAX_BATCH})" in message
    assert runner.released == runner.admitted


def test_v2_body_that_is_not_json_is_400_and_an_unknown_model_404(state: AppState) -> None:
    assert v2_error(client(state).post("/v2/models/full/infer", content=b"{"))[0] == 400
    status, message = v2_error(client(state).post("/v2/models/zzz/infer", json=v2_request([1, 3, SIZE, SIZE])))
    assert status == 404 and message == "model 'zzz' not found; models: edge, full"


def test_every_v2_error_is_the_protocols_body_and_other_routes_keep_the_envelope(
    state: AppState, runner: FakeRunner
) -> None:
    app = client(state)
    assert v2_error(app.get("/v2/models/zzz"))[0] == 404
    assert v2_error(app.get("/v2/models/full/versions/2")) == (404, "model 'full' has no version '2'; versions: 1")
    assert v2_error(app.get("/v2/models/full/nothing"))[0] == 404  # no such route under /v2
    assert v2_error(app.get("/v2/models/full/infer"))[0] == 405
    runner.refuse = Overloaded("queue full (3 requests admitted)", retry_after_s=0.2)
    refused = app.post("/v2/models/full/infer", json=v2_request([1, 3, SIZE, SIZE]))
    assert v2_error(refused) == (503, "queue full (3 requests admitted)") and refused.headers["Retry-After"] == "1"
    runner.refuse, runner.fail = None, RuntimeError("boom")
    assert v2_error(app.post("/v2/models/full/infer", json=v2_request([1, 3, SIZE, SIZE])))[0] == 500
    assert error(app.get("/v2x")) == (404, "not_found")  # not a v2 route: the envelope
    assert error(app.get("/v1/nothing")) == (404, "not_found")


def test_requests_past_the_limit_get_the_error_body_of_their_route(state: AppState) -> None:
    bodies = ByteBudget("body memory", 1024, 1024, "max_body_bytes")
    limited = Client(RequestGate(create_app(state), GateLimits(0, 0, 1024, bodies), state.metrics))
    v2 = limited.get("/v2/health/live")
    assert v2_error(v2) == (503, "0 control requests in progress; try again shortly")
    assert v2.headers["Retry-After"] == "1"
    assert error(limited.get("/v1/status")) == (503, "overloaded")
    infer = limited.post("/v2/models/full/infer", json=v2_request([1, 3, SIZE, SIZE]))
    assert v2_error(infer) == (503, "0 inference requests in progress; try again shortly")
    assert error(limited.post("/v1/classify", content=b"x" * 2000, headers={"Content-Type": "image/png"}))[0] == 413
    assert 'edge_agent_shed_total{reason="concurrency"} 3.0' in state.metrics.render().decode()


def test_v2_outputs_asked_as_binary_follow_the_json_in_the_order_listed(state: AppState) -> None:
    app = client(state)
    body = {
        **v2_request([1, 3, SIZE, SIZE]),
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}],
    }
    head, parts = split_binary(app.post("/v2/models/full/infer", json=body))
    label, probs = head["outputs"]
    assert label["name"] == "label" and "data" not in label
    assert parts["label"] == len(b"scratch").to_bytes(4, "little") + b"scratch"  # BYTES: length, then UTF-8
    assert probs["name"] == "probabilities" and probs["data"] == pytest.approx([0.1, 0.7, 0.2])
    # binary_data_output asks it of every output; an output's own binary_data overrides it.
    everything = {**v2_request([1, 3, SIZE, SIZE]), "parameters": {"binary_data_output": True}}
    head, parts = split_binary(app.post("/v2/models/full/infer", json=everything))
    assert [o["name"] for o in head["outputs"]] == ["probabilities", "label"]
    assert np.frombuffer(parts["probabilities"], "<f4").tolist() == pytest.approx([0.1, 0.7, 0.2])
    override = {**everything, "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}]}
    plain = app.post("/v2/models/full/infer", json=override)
    assert (
        plain.headers["content-type"] == "application/json" and "inference-header-content-length" not in plain.headers
    )
    assert [o["name"] for o in plain.json()["outputs"]] == ["probabilities"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"outputs": [{"name": "logits"}]}, "outputs.0.name: 'logits' is not an output of this model"),
        ({"outputs": [{"name": "label"}, {"name": "label"}]}, "outputs.1.name: output 'label' is asked for twice"),
        ({"outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]}, "binary_data: must be true or false"),
        ({"outputs": [{"name": "label", "parameters": {"classification": 3}}]}, "classification extension"),
        ({"parameters": {"binary_data_output": 1}}, "parameters.binary_data_output: must be true or false"),
    ],
    ids=["unknown", "twice", "flag-not-bool", "classification", "request-flag-not-bool"],
)
def test_v2_outputs_that_cannot_be_given_are_refused_before_admission(
    state: AppState, runner: FakeRunner, extra: dict[str, Any], expected: str
) -> None:
    status, message = v2_error(
        client(state).post("/v2/models/full/infer", json={**v2_request([1, 3, SIZE, SIZE]), **extra})
    )
    assert status == 422 and expected in message and runner.admitted == []


def test_v2_input_must_be_the_one_the_metadata_names(state: AppState, runner: FakeRunner) -> None:
    body = v2_request([1, 3, SIZE, SIZE])
    body["inputs"][0]["name"] = "input0"
    status, message = v2_error(client(state).post("/v2/models/full/infer", json=body))
    assert status == 422 and "this model takes one input, 'image'; got ['input0']" in message


def test_v2_a_batch_runs_through_the_model_in_one_call(state: AppState, runner: FakeRunner) -> None:
    answer = client(state).post("/v2/models/full/infer", json=v2_request([2, 3, SIZE, SIZE]))
    assert answer.status_code == 200, answer.text
    assert [x.shape for x in runner.inputs] == [(2, 3, SIZE, SIZE)]
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, len(CLASSES)] and outputs["label"]["data"] == ["scratch"] * 2
    frames = np.zeros((3, 5, 7, 3), np.uint8)  # UINT8 frames of any size, resized like images
    body = {
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": list(frames.shape), "data": frames.ravel().tolist()}]
    }
    assert client(state).post("/v2/models/edge/infer", json=body).status_code == 200
    assert runner.inputs[-1].shape == (3, 3, SIZE, SIZE)
    too_many = v2_request([MAX_BATCH + 1, 3, SIZE, SIZE], [0.5])
    assert v2_error(client(state).post("/v2/models/full/infer", json=too_many))[0] == 422


def test_v2_metadata_declares_the_batch_the_model_takes_and_the_input_it_expects(
    state: AppState, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = client(state).get("/v2/models/full").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    params = meta["parameters"]
    assert (params["input_min"], params["input_max"], params["input_layout"]) == (0.0, 1.0, "NCHW")
    assert params["max_batch_size"] == MAX_BATCH and params["classes"] == ",".join(CLASSES)
    assert all(isinstance(v, str | int | float | bool) for v in params.values())  # the protocol's $parameter
    assert client(state).get("/v2/models/full/versions/1").json() == meta
    # A model exported with a fixed batch of 1 says so, and a batch of 2 is refused, not failed.
    fixed = [TensorSpec(name="image", dtype="tensor(float)", shape=[1, 3, SIZE, SIZE])]
    monkeypatch.setattr(VARIANT.spec, "inputs", fixed)
    assert client(state).get("/v2/models/edge").json()["inputs"][0]["shape"] == [1, 3, SIZE, SIZE]
    status, message = v2_error(client(state).post("/v2/models/edge/infer", json=v2_request([2, 3, SIZE, SIZE])))
    assert status == 422 and f"must have shape [1, 3, {SIZE}, {SIZE}], got [2, 3, {SIZE}, {SIZE}]" in message


def test_a_bad_pin_body_is_invalid_request_and_a_good_one_pins(state: AppState) -> None:
    admin = client(state, uid=os.getuid())
    refused = admin.post("/v1/pin", json={"config": "full@1", "seconds": -1})
    assert error(refused) == (422, "invalid_request")
    assert refused.json()["error"]["message"].startswith("seconds:")
    made = admin.post("/v1/pin", json={"config": "full@0.5", "seconds": 60, "reason": "test"})
    assert made.status_code == 200 and made.json()["config"] == "full@0.5"


def test_admin_routes_refuse_a_peer_without_credentials(state: AppState) -> None:
    assert error(client(state, uid=None).post("/v1/pin", json={"config": "full@1"})) == (403, "forbidden")


def test_policy_reload_awaits_the_daemons_reload(state: AppState) -> None:
    calls: list[str] = []

    async def reload() -> dict[str, Any]:
        calls.append("reload")
        return {"reloaded": True}

    state.reload = reload
    answer = client(state, uid=os.getuid()).post("/v1/policy/reload")
    assert answer.json() == {"reloaded": True} and calls == ["reload"]


def test_status_and_metrics_describe_the_runner(state: AppState) -> None:
    status = client(state).get("/v1/status").json()
    assert status["config"]["current"] == "full@1" and status["queue"]["capacity"] == 3
    metrics = client(state).get("/metrics").text
    assert "edge_agent_inflight_requests" in metrics
    names = [line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE")]
    assert names and all(name.startswith("edge_agent_") for name in names)


def test_status_shows_the_daemons_paths_only_to_admin_peers(state: AppState) -> None:
    state.last_error = f"{state.settings.policy}:3:1: slo: missing required field"
    admin = client(state, uid=0).get("/v1/status").json()
    assert admin["zoo"] == str(state.zoo.directory) and admin["socket"] == str(state.settings.socket)
    assert str(state.settings.policy) in admin["last_error"]
    other = client(state, uid=os.getuid() + 12345).get("/v1/status")
    assert other.status_code == 200 and "zoo" not in other.json() and "socket" not in other.json()
    for path in (state.settings.zoo, state.settings.socket, state.settings.policy, state.settings.policy.parent):
        assert str(path) not in other.text, path
    assert other.json()["last_error"] == f"{state.settings.policy.name}:3:1: slo: missing required field"


def test_invalid_tensor_errors_keep_their_code(state: AppState, runner: FakeRunner) -> None:
    runner.fail = InvalidTensor("nope")
    answer = client(state).post("/v1/classify", content=png(), headers={"Content-Type": "image/png"})
    assert error(answer) == (422, "invalid_tensor")


# -- the protocol with a mock transport and loop (uvicorn's own test pattern) ----------------------


class MockTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.buffer = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.buffer += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        pass


class MockTimer:
    def __init__(self, delay: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.delay, self.callback, self.args, self.cancelled = delay, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class MockTask:
    def add_done_callback(self, callback: Callable[..., None]) -> None:
        pass


class MockLoop:
    """Timers are kept for the test to fire; tasks are kept for the test to run."""

    def __init__(self) -> None:
        self.timers: list[MockTimer] = []
        self.tasks: list[Coroutine[Any, Any, None]] = []
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> MockTimer:
        timer = MockTimer(delay, callback, args)
        self.timers.append(timer)
        return timer

    def create_task(self, coro: Coroutine[Any, Any, None], **_: Any) -> MockTask:
        self.tasks.append(coro)
        return MockTask()

    def pending(self) -> list[MockTimer]:
        return [t for t in self.timers if not t.cancelled]

    def fire(self) -> None:
        """Run the one pending timer, as if its deadline passed."""
        [timer] = self.pending()
        timer.cancelled = True
        self.now += timer.delay
        timer.callback(*timer.args)


LIMITS = ConnectionLimits(idle_s=10, header_s=5, body_s=30, max_header_bytes=1024)


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"hi"})


def connect(app: ASGIApp = hello, limits: ConnectionLimits = LIMITS) -> tuple[AgentProtocol, MockTransport, MockLoop]:
    loop = MockLoop()
    config = uvicorn.Config(app, http=protocol_class(limits), lifespan="off", log_config=None, access_log=False)
    config.load()
    protocol = protocol_class(limits)(config, ServerState(), {}, _loop=loop)  # type: ignore[arg-type]
    transport = MockTransport()
    protocol.connection_made(transport)
    return protocol, transport, loop


def envelope(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)["error"]["code"]


def test_a_new_connection_is_closed_silently_after_the_idle_deadline() -> None:
    _, transport, loop = connect()
    assert [t.delay for t in loop.pending()] == [LIMITS.idle_s]
    loop.fire()
    assert transport.closed and transport.buffer == b""


def test_headers_that_never_end_get_a_json_408_at_the_header_deadline() -> None:
    protocol, transport, loop = connect()
    protocol.data_received(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
    assert [t.delay for t in loop.pending()] == [LIMITS.header_s]
    loop.fire()
    assert envelope(transport.buffer) == (408, "request_timeout") and transport.closed


def test_headers_past_the_bound_get_a_json_431() -> None:
    protocol, transport, _ = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    protocol.data_received(b"X-Big: " + b"a" * 2000 + b"\r\n")
    assert envelope(transport.buffer) == (431, "headers_too_large") and transport.closed


def test_headers_past_the_bound_in_the_first_send_get_a_json_431() -> None:
    protocol, transport, _ = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
    assert envelope(transport.buffer) == (431, "headers_too_large") and transport.closed


def test_a_body_in_the_same_send_as_small_headers_is_not_counted_as_headers() -> None:
    protocol, transport, _ = connect()
    body = b"a" * 4000  # past the 1024-byte header bound, but a body
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n" + body)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the next request counts from 0
    assert not transport.closed and b" 431 " not in transport.buffer


def test_bytes_that_are_not_http_get_a_json_400() -> None:
    protocol, transport, _ = connect()
    protocol.data_received(b"\x00\x01 not http\r\n\r\n")
    assert envelope(transport.buffer) == (400, "invalid_http") and transport.closed


def test_a_body_that_stalls_gets_a_json_408_at_the_body_deadline() -> None:
    protocol, transport, loop = connect()
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12")
    assert [t.delay for t in loop.pending()] == [LIMITS.body_s]
    loop.fire()
    assert envelope(transport.buffer) == (408, "request_timeout") and transport.closed
    for task in loop.tasks:  # the app's task for the request, never started here
        task.close()


def test_an_answered_request_arms_the_idle_deadline_again() -> None:
    protocol, transport, loop = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    [task] = loop.tasks
    asyncio.run(task)
    assert transport.buffer.startswith(b"HTTP/1.1 200") and transport.buffer.endswith(b"hi")
    assert [t.delay for t in loop.pending()] == [LIMITS.idle_s] and not transport.closed
