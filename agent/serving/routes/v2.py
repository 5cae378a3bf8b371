"""The Open Inference Protocol (KServe v2) for tensor clients: server and model metadata,
health, and `POST /v2/models/{name}[/versions/1]/infer` with the binary tensor extension for
inputs and outputs. Errors on these routes answer the protocol's `{"error": "<message>"}`
(`agent.serving.envelope`).

The adaptive model (the zoo's name) runs on the configuration in force; a variant's own name
runs that variant, at `parameters.token_budget` when given. A batch runs through the model in
one call, on one configuration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from agent import __version__
from agent.errors import InvalidRequest, InvalidTensor, NotFound
from agent.serving.api import (
    V2ErrorBody,
    V2InferRequest,
    V2ModelMetadata,
    V2RequestedOutput,
    V2TensorMeta,
)
from agent.serving.body import receive_body
from agent.serving.codec import ARRAY_COPIES
from agent.serving.envelope import JSON, json_response
from agent.serving.probes import is_ready, live_response, ready_response
from agent.serving.runner import Outcome
from agent.serving.state import AppState
from agent.serving.v2_codec import V2_INPUT, encode_v2_output, join_v2_body, split_v2_body
from agent.values import Config
from agent.zoo.preprocess import ChannelOrder, array_to_input
from agent.zoo.sessions import LoadedVariant

#: The one version of each model: models are not versioned, the zoo is (its manifest).
VERSION = "1"
INPUT = V2_INPUT
#: The outputs, in the order an answer lists them, and their datatypes.
OUTPUTS = {"probabilities": "FP32", "label": "BYTES"}
#: The largest batch one request may carry. A batch runs on one worker, in one call: 32 images
#: at 128 px are a 6 MB model input and about the work of a full queue of single requests.
MAX_BATCH = 32
#: The error statuses of the v2 routes, documented with the protocol's error body.
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": V2ErrorBody} for s in (400, 404, 413, 422, 500, 503)}


def target(state: AppState, name: str) -> tuple[Config | None, int]:
    """(fixed configuration, or None for the adaptive model; the input resolution it expects)."""
    zoo = state.zoo
    if name == zoo.manifest.name:
        return None, max(v.spec.resolution for v in zoo.variants.values())
    if name in zoo.variants:
        return Config(name, 1.0), zoo.variants[name].spec.resolution
    raise NotFound(f"model {name!r} not found; models: {', '.join([zoo.manifest.name, *zoo.variants])}")


def check_version(name: str, version: str) -> None:
    """Refuse (404) a version other than the one each model has."""
    if version != VERSION:
        raise NotFound(f"model {name!r} has no version {version!r}; versions: {VERSION}")


def takes_any_batch(variant: LoadedVariant) -> bool:
    """Whether the variant's image input declares a variable batch dimension (symbolic or -1);
    a model exported with a fixed batch takes only that, so its metadata declares 1."""
    spec = variant.spec
    dims = [t.shape[0] for t in spec.inputs if t.name != spec.token_input and t.shape]
    return len(dims) == 1 and (isinstance(dims[0], str) or dims[0] < 1)


def max_batch(state: AppState, fixed: Config | None) -> int:
    """MAX_BATCH where every variant the model may run takes any batch, else 1."""
    variants = [state.zoo.variants[fixed.variant]] if fixed is not None else state.zoo.variants.values()
    return MAX_BATCH if all(takes_any_batch(v) for v in variants) else 1


def register(app: FastAPI, state: AppState) -> None:
    """Add the v2 routes to `app`."""

    @app.get("/v2", responses=ERRORS)
    async def v2_server() -> Response:
        return json_response({"name": "edge-agent", "version": __version__, "extensions": ["binary_tensor_data"]})

    @app.get("/v2/health/live", responses=ERRORS)
    async def v2_live() -> Response:
        return live_response()

    @app.get("/v2/health/ready", responses=ERRORS)
    async def v2_ready() -> Response:
        return ready_response(state)

    @app.get("/v2/models/{name}", response_model=V2ModelMetadata, responses=ERRORS)
    async def v2_model(name: str) -> Response:
        return json_response(metadata(state, name).model_dump())

    @app.get("/v2/models/{name}/versions/{version}", response_model=V2ModelMetadata, responses=ERRORS)
    async def v2_model_version(name: str, version: str) -> Response:
        check_version(name, version)
        return json_response(metadata(state, name).model_dump())

    @app.get("/v2/models/{name}/ready", responses=ERRORS)
    async def v2_model_ready(name: str) -> Response:
        return model_ready(state, name)

    @app.get("/v2/models/{name}/versions/{version}/ready", responses=ERRORS)
    async def v2_model_version_ready(name: str, version: str) -> Response:
        check_version(name, version)
        return model_ready(state, name)

    @app.post("/v2/models/{name}/infer", responses=ERRORS)
    async def v2_infer(name: str, request: Request) -> Response:
        return await infer(state, name, request)

    @app.post("/v2/models/{name}/versions/{version}/infer", responses=ERRORS)
    async def v2_version_infer(name: str, version: str, request: Request) -> Response:
        check_version(name, version)
        return await infer(state, name, request)


def model_ready(state: AppState, name: str) -> Response:
    """Ready unless starting, draining, or (a fixed model) its variant is out of service."""
    fixed, _ = target(state, name)
    retired = fixed is not None and state.runner.health.out_of_service(name) is not None
    ok = is_ready(state) and not retired
    return json_response({"name": name, "ready": ok}, 200 if ok else 503)


def metadata(state: AppState, name: str) -> V2ModelMetadata:
    """The model's tensors and, in `parameters` (string, number or boolean values, as the
    protocol allows), what it expects of them: range, layout, channel order, batch and classes."""
    fixed, size = target(state, name)
    batch = max_batch(state, fixed)
    dim = -1 if batch > 1 else 1
    classes = state.zoo.classes
    n = "N" if batch > 1 else "1"
    return V2ModelMetadata(
        name=name,
        versions=[VERSION],
        inputs=[V2TensorMeta(name=INPUT, datatype="FP32", shape=[dim, 3, size, size])],
        outputs=[
            V2TensorMeta(name="probabilities", datatype=OUTPUTS["probabilities"], shape=[dim, len(classes)]),
            V2TensorMeta(name="label", datatype=OUTPUTS["label"], shape=[dim]),
        ],
        parameters={
            "input_layout": "NCHW",
            "input_channel_order": "RGB",
            "input_min": 0.0,
            "input_max": 1.0,
            "uint8_input": (
                f"UINT8 [{n}, H, W, 3] or [H, W, 3]: 8-bit frames of any size (0-255, NHWC), resized like images; "
                "request parameters.channel_order rgb (default) or bgr"
            ),
            "max_batch_size": batch,
            "classes": ",".join(classes),
            "adaptive": fixed is None,
        },
    )


def requested_outputs(req: V2InferRequest) -> list[tuple[str, bool]]:
    """(name, as binary) of each output to answer, in the order asked (all when none are named).
    An output's `parameters.binary_data` overrides the request's `binary_data_output`."""
    default = flag(req.parameters, "binary_data_output", "parameters", False)
    if not req.outputs:
        return [(name, default) for name in OUTPUTS]
    chosen: list[tuple[str, bool]] = []
    for i, output in enumerate(req.outputs):
        where = f"outputs.{i}"
        check_output(output, where, [name for name, _ in chosen])
        chosen.append((output.name, flag(output.parameters, "binary_data", f"{where}.parameters", default)))
    return chosen


def check_output(output: V2RequestedOutput, where: str, taken: list[str]) -> None:
    """Refuse an output this model cannot give as asked: unknown, repeated, or a classification."""
    if output.name not in OUTPUTS:
        raise InvalidRequest(
            f"{where}.name: {output.name!r} is not an output of this model; outputs: {', '.join(OUTPUTS)}"
        )
    if output.name in taken:
        raise InvalidRequest(f"{where}.name: output {output.name!r} is asked for twice")
    if "classification" in (output.parameters or {}):
        raise InvalidRequest(
            f"{where}.parameters.classification: the classification extension is not offered; "
            "ask for 'label' (the top class) and 'probabilities'"
        )


def flag(parameters: dict[str, Any] | None, key: str, where: str, default: bool) -> bool:
    """A boolean parameter: a string or a number there is a client's mistake, not a truth value."""
    value = (parameters or {}).get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where}.{key}: must be true or false, got {value!r}")
    return value


async def infer(state: AppState, name: str, request: Request) -> Response:
    """Body (read by the gate) -> JSON and tensor decoded off the loop, the JSON's memory
    reserved meanwhile -> request checked -> admission -> run (the tensor's memory reserved
    while it is fitted) -> the v2 answer."""
    runner = state.runner
    fixed, size = target(state, name)
    batch = max_batch(state, fixed)
    body = await receive_body(request.receive, request.headers.get("content-length"), state.settings.max_body_bytes)
    head, binary = split_v2_body(body, request.headers.get("inference-header-content-length"))
    del body
    req, arr = await state.decoding.v2(head, binary, size, batch)
    del head, binary
    outputs = requested_outputs(req)
    budget = (req.parameters or {}).get("token_budget")
    if fixed is not None and budget is not None:
        if not isinstance(budget, int | float):
            raise InvalidTensor("parameters.token_budget must be a number")
        fixed = runner.validate(Config(fixed.variant, float(budget)))
    order = (req.parameters or {}).get("channel_order", "rgb")
    if order not in ("rgb", "bgr"):
        raise InvalidTensor("parameters.channel_order must be rgb or bgr")
    channel_order: ChannelOrder = "bgr" if order == "bgr" else "rgb"
    memory = state.decoding.budget
    what = f"a v2 {arr.dtype} batch of shape {tuple(arr.shape)}"
    cost = memory.check(ARRAY_COPIES * arr.nbytes, what)

    def prepare(variant: LoadedVariant) -> np.ndarray:
        spec = variant.spec
        with memory.reserve(cost, what):
            items = [arr[i : i + 1] if arr.dtype == np.float32 else arr[i] for i in range(len(arr))]
            fitted = [array_to_input(x, spec.resolution, channel_order, resize=spec.preprocess.resize) for x in items]
            return fitted[0] if len(fitted) == 1 else np.concatenate(fitted)

    outcome = await runner.run(runner.admit(None, fixed), prepare)
    return answer(state, name, req.id, outputs, outcome)


def answer(
    state: AppState, name: str, request_id: str | None, outputs: list[tuple[str, bool]], outcome: Outcome
) -> Response:
    """The v2 answer: the outputs asked for, each as JSON data or binary (then the body is the
    JSON and the outputs' bytes, with Inference-Header-Content-Length)."""
    probs = outcome.prediction.probs
    values = {"probabilities": probs, "label": np.array([state.zoo.classes[i] for i in probs.argmax(1)])}
    encoded = [encode_v2_output(out, OUTPUTS[out], values[out], binary) for out, binary in outputs]
    head = orjson.dumps(
        {
            "model_name": name,
            "model_version": VERSION,
            "id": request_id or "",
            "parameters": {
                "variant": outcome.config.variant,
                "token_budget": outcome.config.budget,
                "queue_ms": round(outcome.queue_ms, 3),
                "decode_ms": round(outcome.decode_ms, 3),
                "compute_ms": round(outcome.compute_ms, 3),
            },
            "outputs": [described for described, _ in encoded],
        }
    )
    body, headers = join_v2_body(head, [raw for _, raw in encoded])
    return Response(body, 200, headers, media_type="application/octet-stream" if headers else JSON)
