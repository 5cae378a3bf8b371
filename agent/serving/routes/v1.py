"""`POST /v1/classify`, `GET /v1/status`, `GET /metrics`.

The request path of `/v1/classify`, top to bottom: media type and query -> body (bounded, read
by the gate before the request takes an inference place) -> admission (the runner's one check,
before anything is decoded) -> decode (header and memory reservation in a decode thread, pixels
in the worker) -> run -> answer. Every request pays for that path on the event loop, so it is a
plain ASGI handler that the app calls in a lane of its own (`agent.serving.app`); FastAPI only
declares the route, for the schema.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from numpy.typing import NDArray
from prometheus_client import Histogram
from pydantic import ValidationError
from starlette.datastructures import Headers, QueryParams
from starlette.types import Receive, Scope, Send

from agent import __version__
from agent.errors import BadInput, ExplainUnavailable, InvalidRequest, validation_message
from agent.serving.api import Classification, ClassifyQuery
from agent.serving.body import receive_body
from agent.serving.budget import ByteBudget
from agent.serving.codec import (
    ARRAY_COPIES,
    IMAGE_TYPES,
    check_frame,
    check_media_type,
    decode_npy,
    decode_to_input,
    image_cost,
    open_image,
    release,
)
from agent.serving.envelope import json_response, send_json
from agent.serving.gate import CLASSIFY
from agent.serving.metrics import Metrics
from agent.serving.peers import hide_paths, is_admin, peer_uid
from agent.serving.probes import is_ready, metrics_response
from agent.serving.runner import Outcome, Prepare
from agent.serving.state import AppState
from agent.zoo.manifest import Variant
from agent.zoo.preprocess import ChannelOrder, Roi, array_to_input
from agent.zoo.sessions import LoadedVariant

#: Bodies up to this size are checked on the event loop (see `classify`); larger ones in a thread.
INLINE_CHECK_BYTES = 256 * 1024
#: A request without a query asks for the defaults (a camera's usual request): not validated again.
DEFAULT_QUERY = ClassifyQuery.model_validate({})
STATUS_WINDOW_S = 10.0  # span of the latency percentiles in /v1/status
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def register(app: FastAPI, state: AppState) -> None:
    """Add the v1 routes to `app` (classify only declared: `classify_handler` serves it)."""
    declare_classify(app)

    @app.get("/v1/status")
    async def status(request: Request) -> Response:
        """The daemon's state; the folders and files it uses only for an admin peer."""
        body = status_body(state)
        if not is_admin(peer_uid(request.scope), state.settings):
            body = {k: v for k, v in body.items() if k not in ("zoo", "socket")}
            body = hide_paths(body, private_paths(state))
        return json_response(body)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return metrics_response(state)


def declare_classify(app: FastAPI) -> None:
    """The OpenAPI declaration of `/v1/classify`; the route is served by `classify_handler`."""

    @app.post(
        CLASSIFY,
        response_model=Classification,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"image/png": _BINARY, "image/jpeg": _BINARY, "application/x-npy": _BINARY},
            }
        },
    )
    async def classify(query: Annotated[ClassifyQuery, Query()]) -> Response:
        """Classify one image (PNG/JPEG/...), a float32 .npy tensor (3, H, W) in [0, 1], or a uint8
        .npy frame (H, W, 3) as camera code holds it (`channel_order=bgr` for OpenCV's)."""
        raise NotImplementedError("served by classify_handler")  # this function only declares the schema


def classify_handler(state: AppState) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    runner, settings, classes = state.runner, state.settings, state.zoo.classes
    largest = max(v.spec.resolution for v in state.zoo.variants.values())
    observers = Observers(state.metrics)

    async def classify(scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        kind = check_media_type(headers.get("content-type", ""))
        try:
            raw_query = scope["query_string"]
            query = ClassifyQuery.model_validate(dict(QueryParams(raw_query))) if raw_query else DEFAULT_QUERY
        except ValidationError as exc:
            located = RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()])
            raise InvalidRequest(validation_message(located)) from None
        if query.explain:
            check_explainable(runner.zoo.variants[runner.current.variant].spec)
        body = await receive_body(receive, headers.get("content-length"), settings.max_body_bytes)
        ticket = runner.admit(query.deadline_ms)
        args = (kind, body, query.region, query.channel_order, state.decoding.budget, largest)
        try:
            # A small body's check is bounded work (an image header, a 64k-value finiteness test:
            # tens of microseconds), cheaper on the loop than a hop to a decode thread and back.
            prepare = (
                decoder(*args) if len(body) <= INLINE_CHECK_BYTES else await state.decoding.in_thread(decoder, *args)
            )
        except BaseException:
            runner.release(ticket)
            raise
        outcome = await runner.run(ticket, prepare)
        try:
            await send_json(send, answer(classes, outcome, query.explain))
        finally:
            observers.observe(outcome)  # after the answer is on its way: the client waits for no metric

    return classify


def check_explainable(spec: Variant) -> None:
    if spec.attention_name is None:
        raise ExplainUnavailable(
            f"explain=true: variant {spec.name} has no attention output to explain with; the manifest's "
            "attention_output names one when the model has it (docs/own-model.md)"
        )


def decoder(
    kind: str,
    body: bytes,
    roi: Roi | None,
    channel_order: ChannelOrder,
    budget: ByteBudget,
    largest: int,
) -> Prepare:
    """Check the body (image header, array shape, ROI inside the frame) and what its decoding
    for an input of up to `largest` pixels may cost (413 past the per-request bound); the worker
    reserves that memory (503 while others hold the rest), makes the input and gives it back.
    Runs in a decode thread, or on the loop for a small body (`INLINE_CHECK_BYTES`)."""
    if kind in IMAGE_TYPES:
        if channel_order != "rgb":
            raise BadInput("channel_order applies to .npy arrays; an image file carries its own channel order")
        image = open_image(body)
        if roi is not None:
            roi.check(*image.size)
        width, height = image.size
        what = f"a {width}x{height} {image.mode} {image.format} image"
        cost = budget.check(image_cost(image, largest, roi), what)

        def prepare_image(variant: LoadedVariant) -> np.ndarray:
            try:
                held = budget.reserve(cost, what)
            except BaseException:
                image.close()
                raise
            try:
                return decode_to_input(image, variant.spec.resolution, roi, variant.spec.preprocess.resize)
            finally:
                release(image)
                held.release()

        return prepare_image
    frame = check_frame(decode_npy(body))
    if roi is not None:
        height, width = frame.shape[:2] if frame.dtype == np.uint8 else frame.shape[2:]
        roi.check(width, height)
    return array_preparer(frame, channel_order, roi, budget)


def array_preparer(
    frame: NDArray[np.float32] | NDArray[np.uint8], channel_order: ChannelOrder, roi: Roi | None, budget: ByteBudget
) -> Prepare:
    """The worker's side of a checked array: reserve what fitting it costs, fit it, give it back."""
    # dtype.type.__name__, not str(dtype): numpy formats a dtype in Python (20 us a request)
    what = f"a {frame.dtype.type.__name__} array of shape {tuple(frame.shape)}"
    cost = budget.check(ARRAY_COPIES * frame.nbytes, what)

    def prepare_array(variant: LoadedVariant) -> np.ndarray:
        with budget.reserve(cost, what):
            return array_to_input(frame, variant.spec.resolution, channel_order, roi, variant.spec.preprocess.resize)

    return prepare_array


class Observers:
    """The histograms an answer is observed in, each variant's series looked up once (a label
    lookup takes a lock and a dict per observation)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._by_variant: dict[str, tuple[Histogram, Histogram]] = {}

    def observe(self, outcome: Outcome) -> None:
        variant = outcome.config.variant
        series = self._by_variant.get(variant)
        if series is None:
            m = self.metrics
            series = self._by_variant[variant] = (
                m.inference_seconds.labels(variant=variant),
                m.model_seconds.labels(variant=variant),
            )
        inference, model = series
        inference.observe((outcome.queue_ms + outcome.decode_ms + outcome.compute_ms) / 1000)
        model.observe(outcome.compute_ms / 1000)
        self.metrics.queue_seconds.observe(outcome.queue_ms / 1000)
        self.metrics.decode_seconds.observe(outcome.decode_ms / 1000)


def answer(classes: list[str], outcome: Outcome, explain: bool) -> dict[str, Any]:
    """The `Classification` answer as a plain dict: built on the event loop for every request,
    so it skips pydantic (the route's response_model still documents it)."""
    probs = outcome.prediction.probs[0].tolist()
    order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[:3]
    top = [{"label": classes[i], "score": round(probs[i], 6)} for i in order]
    result: dict[str, Any] = {
        "label": top[0]["label"],
        "score": top[0]["score"],
        "top": top,
        "variant": outcome.config.variant,
        "budget": outcome.config.budget,
        "kept_tokens": outcome.prediction.kept_tokens,
        "queue_ms": round(outcome.queue_ms, 3),
        "decode_ms": round(outcome.decode_ms, 3),
        "compute_ms": round(outcome.compute_ms, 3),
    }
    if explain and outcome.prediction.attention is not None:
        result["attention"] = np.round(outcome.prediction.attention[0], 5).tolist()
    return result


def private_paths(state: AppState) -> list[str]:
    """The paths a non-admin's status does not show, longest first (a folder's file before it)."""
    s = state.settings
    paths = {str(s.zoo), str(state.zoo.directory), str(s.socket), str(s.socket.parent), str(s.policy)}
    paths |= {str(s.policy.parent), str(s.state_dir) if s.state_dir else ""}
    return sorted((p for p in paths if p not in ("", ".", "/")), key=len, reverse=True)


def status_body(state: AppState) -> dict[str, Any]:
    """`GET /v1/status`: the configuration in force and why, the queue, the latency window."""
    runner, zoo, settings = state.runner, state.zoo, state.settings
    pin = runner.pin_state
    body: dict[str, Any] = {
        "version": __version__,
        "ready": is_ready(state),
        "draining": state.draining,
        "uptime_s": round(time.monotonic() - state.started_at, 1),
        "config": {
            "current": str(runner.current),
            "variant": runner.current.variant,
            "budget": runner.current.budget,
            "reason": runner.reason,
            "since": runner.since,
            "pinned": {
                "config": str(pin.config),
                "until": pin.until,
                "left_s": round(runner.pin_left_s() or 0.0, 1),
                "reason": pin.reason,
            }
            if pin
            else None,
        },
        "decisions": [{"at": s.at, "old": s.old, "new": s.new, "reason": s.reason} for s in runner.history],
        "variants": {
            n: {"resolution": v.spec.resolution, "tokens": v.spec.tokens, "budgets": list(v.spec.budgets)}
            for n, v in zoo.variants.items()
        },
        "failed_variants": zoo.failures,
        "queue": {
            "inflight": runner.inflight,
            "capacity": runner.capacity,
            "workers": runner.workers,
            "ort_threads": settings.ort_threads,
            "loop_priority": state.loop_priority,
        },
        "window": {"span_s": STATUS_WINDOW_S, **runner.window.stats(runner.clock.monotonic(), STATUS_WINDOW_S)},
        "decode": {"span_s": STATUS_WINDOW_S, **runner.decode_window.stats(runner.clock.monotonic(), STATUS_WINDOW_S)},
        "zoo": str(zoo.directory),
        "socket": str(settings.socket),
        "metrics_listen": state.metrics_address,
        "last_error": state.last_error,
    }
    if state.extra_status:
        body.update(state.extra_status())
    return body
