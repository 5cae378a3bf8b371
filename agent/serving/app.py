"""HTTP routes (FastAPI on uvicorn, over the Unix socket) and the one place errors become JSON.

Request path of `/v1/classify`, top to bottom: admission check (refuse before reading the
body) -> decode (header on the loop, pixels in the worker) -> runner.submit (admit, queue,
run) -> encode. Every request pays for that path on the event loop, so it is a plain ASGI
handler behind the FastAPI route that declares it: FastAPI's per-request dependency solving
and Request object cost more loop time than the rest of the path (bench/overhead.py).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import orjson
import structlog
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent import __version__
from agent.errors import AgentError, BadInput, Forbidden, InvalidTensor, NotFound, PayloadTooLarge, UnsupportedMediaType
from agent.serving.api import (
    Classification,
    ClassifyQuery,
    ErrorBody,
    PinAnswer,
    PinRequest,
    V2InferRequest,
    V2ModelMetadata,
    V2TensorMeta,
)
from agent.serving.codec import (
    check_image_tensor,
    decode_npy,
    image_to_input,
    load_pixels,
    open_image,
    release,
    tensor_to_input,
)
from agent.serving.metrics import Metrics
from agent.serving.runner import Config, Outcome, Runner
from agent.settings import Settings
from agent.zoo.sessions import LoadedVariant, Zoo

log = structlog.get_logger(__name__)

IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/tiff", "image/webp"}
NPY_TYPES = {"application/x-npy", "application/npy", "application/octet-stream"}
JSON = "application/json"
STATUS_WINDOW_S = 10.0  # span of the latency percentiles in /v1/status


@dataclass
class AppState:
    """What the routes need; owned by the daemon."""

    settings: Settings
    zoo: Zoo
    runner: Runner
    metrics: Metrics
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    draining: bool = False
    loop_priority: int = 0  # nice levels the event loop runs above the workers, as granted
    last_error: str | None = None
    reload: Any = None  # callable () -> dict, set by the daemon
    extra_status: Any = None  # callable () -> dict, set by the daemon


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, media_type=JSON)


def error_response(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


async def receive_body(receive: Receive, length: str | None, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (never read whole)."""
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise BadInput("invalid Content-Length") from None
        if declared > limit:
            raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class ObserveMiddleware:
    """Counts every answer by route and status, logs a sample of requests, and turns any
    unexpected exception into a logged 500 JSON answer."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client hung up before its body arrived: nobody to answer, nothing broken here.
            status["code"] = 499
            log.info("client_disconnected", path=scope.get("path"))
        except Exception as exc:
            log.exception("request_failed", path=scope.get("path"), error=repr(exc))
            self.state.last_error = f"{type(exc).__name__}: {exc}"
            self.state.metrics.errors.labels(code="internal").inc()
            if not status["sent"]:
                response = error_response("internal", "internal error; see the daemon log", 500)
                await response(scope, receive, send_wrapper)
        route = scope.get("route")
        label = getattr(route, "path", "unmatched")
        self.state.metrics.requests.labels(route=label, status=str(status["code"])).inc()
        sample = self.state.settings.request_log_sample
        if sample and random.random() < sample:
            log.info(
                "request",
                method=scope["method"],
                path=label,
                status=status["code"],
                ms=round((time.perf_counter() - started) * 1000, 3),
            )


def peer_uid(request: Request) -> int | None:
    state = request.scope.get("state") or {}
    return state.get("peer_uid")


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(
        title="edge-agent",
        version=__version__,
        description="Adaptive on-device inference over a Unix socket.",
        # Prometheus (/metrics) and structlog do this job here; FastAPI's OpenTelemetry hooks
        # would only cost each request a check of the global providers.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        responses={
            400: {"model": ErrorBody},
            413: {"model": ErrorBody},
            415: {"model": ErrorBody},
            422: {"model": ErrorBody},
            503: {"model": ErrorBody},
        },
    )
    app.add_middleware(ObserveMiddleware, state=state)
    runner, zoo, settings, metrics = state.runner, state.zoo, state.settings, state.metrics

    @app.exception_handler(AgentError)
    async def _agent_error(request: Request, exc: AgentError) -> Response:
        headers = None
        retry = getattr(exc, "retry_after_s", None)
        if retry is not None:
            headers = {"Retry-After": str(max(1, math.ceil(retry)))}
            metrics.shed.labels(reason="deadline" if "deadline" in exc.message else "queue").inc()
        metrics.errors.labels(code=exc.code).inc()
        if exc.status >= 500 and retry is None:
            state.last_error = exc.message
        return error_response(exc.code, exc.message, exc.status, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        metrics.errors.labels(code="invalid_request").inc()
        return error_response("invalid_request", f"{where}: {first.get('msg')}", 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(codes.get(exc.status_code, "http_error"), str(exc.detail), exc.status_code)

    def require_admin(request: Request) -> int:
        uid = peer_uid(request)
        allowed = {0, os.getuid(), *settings.admin_uids}
        if uid is None or uid not in allowed:
            log.warning("admin_refused", uid=uid, path=request.url.path)
            raise Forbidden(f"uid {uid} may not call admin routes (allowed: root, the daemon's uid, admin_uids)")
        return uid

    def answer(outcome: Outcome, explain: bool) -> dict[str, Any]:
        """The `Classification` answer as a plain dict: built on the event loop for every request,
        so it skips pydantic (the route's response_model still documents it)."""
        probs = outcome.prediction.probs[0].tolist()
        order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[:3]
        top = [{"label": zoo.classes[i], "score": round(probs[i], 6)} for i in order]
        metrics.inference_seconds.labels(variant=outcome.config.variant).observe(
            (outcome.queue_ms + outcome.compute_ms) / 1000
        )
        metrics.queue_seconds.observe(outcome.queue_ms / 1000)
        result: dict[str, Any] = {
            "label": top[0]["label"],
            "score": top[0]["score"],
            "top": top,
            "variant": outcome.config.variant,
            "budget": outcome.config.budget,
            "kept_tokens": outcome.prediction.kept_tokens,
            "queue_ms": round(outcome.queue_ms, 3),
            "compute_ms": round(outcome.compute_ms, 3),
        }
        if explain and outcome.prediction.attention is not None:
            result["attention"] = np.round(outcome.prediction.attention[0], 5).tolist()
        return result

    async def classify_asgi(scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        kind = media_type(headers.get("content-type", ""))
        if kind not in IMAGE_TYPES and kind not in NPY_TYPES:
            raise UnsupportedMediaType(
                f"Content-Type {kind or '(none)'!r} is not supported; send image/png, image/jpeg or application/x-npy"
            )
        try:
            query = ClassifyQuery.model_validate(dict(QueryParams(scope["query_string"])))
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from None
        runner.check_admission(query.deadline_ms)  # a refusal should not wait for the body's decode
        body = await receive_body(receive, headers.get("content-length"), settings.max_body_bytes)
        if kind in IMAGE_TYPES:
            image = open_image(body)

            def prepare(variant: LoadedVariant) -> np.ndarray:
                try:
                    return image_to_input(load_pixels(image), variant.spec.resolution)
                finally:
                    release(image)
        else:
            tensor = check_image_tensor(decode_npy(body))

            def prepare(variant: LoadedVariant) -> np.ndarray:
                return tensor_to_input(tensor, variant.spec.resolution)

        outcome = await runner.submit(prepare, query.deadline_ms)
        await json_response(answer(outcome, query.explain))(scope, receive, send)

    @app.post(
        "/v1/classify",
        response_model=Classification,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def classify(query: Annotated[ClassifyQuery, Query()]) -> Response:
        """Classify one image (PNG/JPEG/...) or a float32 .npy tensor (3, H, W) in [0, 1]."""
        raise NotImplementedError("served by classify_asgi")  # this function only declares the schema

    route = next(r for r in app.router.routes if isinstance(r, Route) and r.path == "/v1/classify")
    route.app = classify_asgi

    # -- Open Inference Protocol (KServe v2) ----------------------------------------------

    model_name = zoo.manifest.name

    def v2_target(name: str) -> tuple[Config | None, int]:
        """(fixed configuration or None for the adaptive model, expected input resolution)."""
        if name == model_name:
            full = max(v.spec.resolution for v in zoo.variants.values())
            return None, full
        if name in zoo.variants:
            return Config(name, 1.0), zoo.variants[name].spec.resolution
        raise NotFound(f"model {name!r} not found; models: {', '.join([model_name, *zoo.variants])}")

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
        fixed, size = v2_target(name)
        meta = V2ModelMetadata(
            name=name,
            versions=["1"],
            inputs=[V2TensorMeta(name="image", datatype="FP32", shape=[-1, 3, size, size])],
            outputs=[
                V2TensorMeta(name="probabilities", datatype="FP32", shape=[-1, len(zoo.classes)]),
                V2TensorMeta(name="label", datatype="BYTES", shape=[-1]),
            ],
            parameters={"classes": zoo.classes, "adaptive": fixed is None},
        )
        return json_response(meta.model_dump())

    @app.get("/v2/models/{name}/ready")
    async def v2_model_ready(name: str) -> Response:
        fixed, _ = v2_target(name)
        retired = fixed is not None and runner.health.out_of_service(name) is not None
        ok = state.ready and not state.draining and not retired
        return json_response({"name": name, "ready": ok}, 200 if ok else 503)

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> Response:
        fixed, size = v2_target(name)
        body = await read_body(request, settings.max_body_bytes)
        header_len = request.headers.get("inference-header-content-length")
        binary = b""
        if header_len is not None:
            try:
                split = int(header_len)
            except ValueError:
                raise BadInput("invalid Inference-Header-Content-Length") from None
            if not 0 < split <= len(body):
                raise BadInput("Inference-Header-Content-Length is outside the body")
            body, binary = body[:split], body[split:]
        try:
            req = V2InferRequest.model_validate(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            raise BadInput(f"invalid JSON: {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidTensor(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
        tensor = req.inputs[0]
        if tensor.datatype != "FP32":
            raise InvalidTensor(f"input {tensor.name!r}: datatype must be FP32, got {tensor.datatype}")
        if len(tensor.shape) != 4 or tensor.shape[0] != 1 or tensor.shape[1:] != [3, size, size]:
            raise InvalidTensor(f"input {tensor.name!r}: shape must be [1, 3, {size}, {size}], got {tensor.shape}")
        count = 3 * size * size
        binary_size = (tensor.parameters or {}).get("binary_data_size")
        if binary_size is not None:
            if type(binary_size) is not int or binary_size != 4 * count or len(binary) < binary_size:
                raise InvalidTensor(
                    f"input {tensor.name!r}: binary_data_size {binary_size} does not match shape (needs {4 * count})"
                )
            arr = np.frombuffer(binary[:binary_size], dtype="<f4").reshape(tensor.shape)
        else:
            try:
                arr = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
            except (ValueError, TypeError):
                raise InvalidTensor(
                    f"input {tensor.name!r}: data does not hold {count} numbers for shape {tensor.shape}"
                ) from None
        arr = check_image_tensor(np.array(arr, dtype=np.float32))
        budget = (req.parameters or {}).get("token_budget")
        if fixed is not None and budget is not None:
            if not isinstance(budget, int | float):
                raise InvalidTensor("parameters.token_budget must be a number")
            fixed = Config(fixed.variant, float(budget))
            runner.check(fixed)

        def prepare(variant: LoadedVariant) -> np.ndarray:
            return tensor_to_input(arr, variant.spec.resolution)

        outcome = await runner.submit(prepare, None, fixed)
        probs = outcome.prediction.probs
        return json_response(
            {
                "model_name": name,
                "model_version": "1",
                "id": req.id or "",
                "parameters": {
                    "variant": outcome.config.variant,
                    "token_budget": outcome.config.budget,
                    "queue_ms": round(outcome.queue_ms, 3),
                    "compute_ms": round(outcome.compute_ms, 3),
                },
                "outputs": [
                    {
                        "name": "probabilities",
                        "datatype": "FP32",
                        "shape": list(probs.shape),
                        "data": probs.ravel().tolist(),
                    },
                    {
                        "name": "label",
                        "datatype": "BYTES",
                        "shape": [len(probs)],
                        "data": [zoo.classes[i] for i in probs.argmax(1)],
                    },
                ],
            }
        )

    # -- status, metrics, admin -------------------------------------------------------------

    @app.get("/v1/status")
    async def status() -> Response:
        now = time.time()
        pin = runner.pin_state
        body: dict[str, Any] = {
            "version": __version__,
            "ready": state.ready and not state.draining,
            "draining": state.draining,
            "uptime_s": round(now - state.started_at, 1),
            "config": {
                "current": str(runner.current),
                "variant": runner.current.variant,
                "budget": runner.current.budget,
                "reason": runner.reason,
                "since": runner.since,
                "pinned": {"config": str(pin.config), "until": pin.until, "reason": pin.reason} if pin else None,
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
            "window": {"span_s": STATUS_WINDOW_S, **runner.window.stats(time.monotonic(), STATUS_WINDOW_S)},
            "zoo": str(zoo.directory),
            "socket": str(settings.socket),
            "last_error": state.last_error,
        }
        if state.extra_status:
            body.update(state.extra_status())
        return json_response(body)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        metrics.inflight.set(runner.inflight)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/pin", response_model=PinAnswer)
    async def pin(request: Request, _: int = Depends(require_admin)) -> Response:
        body = await read_body(request, 64 * 1024)
        try:
            req = PinRequest.model_validate(orjson.loads(body or b"{}"))
        except orjson.JSONDecodeError as exc:
            raise BadInput(f"invalid JSON: {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidTensor(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
        made = runner.pin(Config.parse(req.config), req.seconds, req.reason)
        return json_response(PinAnswer(config=str(made.config), until=made.until, reason=made.reason).model_dump())

    @app.delete("/v1/pin")
    async def unpin(_: int = Depends(require_admin)) -> Response:
        return json_response({"unpinned": runner.unpin("unpinned by admin")})

    @app.post("/v1/policy/reload")
    async def reload(_: int = Depends(require_admin)) -> Response:
        if state.reload is None:
            raise NotFound("reload is not available")
        return json_response(state.reload())

    return app
