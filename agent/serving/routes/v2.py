"""The Open Inference Protocol (KServe v2) for tensor clients: server and model metadata,
health, and `POST /v2/models/{name}/infer` with the binary tensor extension.

The adaptive model (the zoo's name) runs on the configuration in force; a variant's own name
runs that variant, at `parameters.token_budget` when given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from agent import __version__
from agent.errors import InvalidTensor, NotFound
from agent.serving.api import V2InferRequest, V2ModelMetadata, V2TensorMeta
from agent.serving.body import parse_json, receive_body
from agent.serving.codec import decode_v2_tensor, split_v2_body
from agent.serving.envelope import json_response
from agent.serving.runner import Outcome
from agent.serving.state import AppState
from agent.values import Config
from agent.zoo.preprocess import ChannelOrder, array_to_input
from agent.zoo.sessions import LoadedVariant


def target(state: AppState, name: str) -> tuple[Config | None, int]:
    """(fixed configuration, or None for the adaptive model; the input resolution it expects)."""
    zoo = state.zoo
    if name == zoo.manifest.name:
        return None, max(v.spec.resolution for v in zoo.variants.values())
    if name in zoo.variants:
        return Config(name, 1.0), zoo.variants[name].spec.resolution
    raise NotFound(f"model {name!r} not found; models: {', '.join([zoo.manifest.name, *zoo.variants])}")


def register(app: FastAPI, state: AppState) -> None:
    """Add the v2 routes to `app`."""

    @app.get("/v2")
    async def v2_server() -> Response:
        return json_response({"name": "edge-agent", "version": __version__, "extensions": ["binary_tensor_data"]})

    @app.get("/v2/health/live")
    async def v2_live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    async def v2_ready() -> Response:
        ok = state.ready and not state.draining
        return json_response({"ready": ok}, 200 if ok else 503)

    @app.get("/v2/models/{name}", response_model=V2ModelMetadata)
    async def v2_model(name: str) -> Response:
        return json_response(metadata(state, name).model_dump())

    @app.get("/v2/models/{name}/ready")
    async def v2_model_ready(name: str) -> Response:
        fixed, _ = target(state, name)
        retired = fixed is not None and state.runner.health.out_of_service(name) is not None
        ok = state.ready and not state.draining and not retired
        return json_response({"name": name, "ready": ok}, 200 if ok else 503)

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> Response:
        return json_response(await infer(state, name, request))


def metadata(state: AppState, name: str) -> V2ModelMetadata:
    fixed, size = target(state, name)
    classes = state.zoo.classes
    return V2ModelMetadata(
        name=name,
        versions=["1"],
        inputs=[V2TensorMeta(name="image", datatype="FP32", shape=[-1, 3, size, size])],  # or UINT8 [H, W, 3]
        outputs=[
            V2TensorMeta(name="probabilities", datatype="FP32", shape=[-1, len(classes)]),
            V2TensorMeta(name="label", datatype="BYTES", shape=[-1]),
        ],
        parameters={"classes": classes, "adaptive": fixed is None},
    )


async def infer(state: AppState, name: str, request: Request) -> dict[str, Any]:
    """Body -> admission -> tensor -> run -> the v2 answer."""
    runner = state.runner
    fixed, size = target(state, name)
    body = await receive_body(request.receive, request.headers.get("content-length"), state.settings.max_body_bytes)
    head, binary = split_v2_body(body, request.headers.get("inference-header-content-length"))
    req = parse_json(V2InferRequest, head, InvalidTensor)
    budget = (req.parameters or {}).get("token_budget")
    if fixed is not None and budget is not None:
        if not isinstance(budget, int | float):
            raise InvalidTensor("parameters.token_budget must be a number")
        fixed = runner.validate(Config(fixed.variant, float(budget)))
    order = (req.parameters or {}).get("channel_order", "rgb")
    if order not in ("rgb", "bgr"):
        raise InvalidTensor("parameters.channel_order must be rgb or bgr")
    channel_order: ChannelOrder = "bgr" if order == "bgr" else "rgb"
    ticket = runner.admit(None, fixed)
    try:
        arr = decode_v2_tensor(req.inputs[0], binary, size)
    except BaseException:
        runner.release(ticket)
        raise

    def prepare(variant: LoadedVariant) -> np.ndarray:
        return array_to_input(arr, variant.spec.resolution, channel_order, resize=variant.spec.preprocess.resize)

    return answer(state, name, req.id, await runner.run(ticket, prepare))


def answer(state: AppState, name: str, request_id: str | None, outcome: Outcome) -> dict[str, Any]:
    probs = outcome.prediction.probs
    return {
        "model_name": name,
        "model_version": "1",
        "id": request_id or "",
        "parameters": {
            "variant": outcome.config.variant,
            "token_budget": outcome.config.budget,
            "queue_ms": round(outcome.queue_ms, 3),
            "decode_ms": round(outcome.decode_ms, 3),
            "compute_ms": round(outcome.compute_ms, 3),
        },
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape), "data": probs.ravel().tolist()},
            {
                "name": "label",
                "datatype": "BYTES",
                "shape": [len(probs)],
                "data": [state.zoo.classes[i] for i in probs.argmax(1)],
            },
        ],
    }
