"""Admin routes: `POST`/`DELETE /v1/pin` and `POST /v1/policy/reload`. Only peers whose uid
(SO_PEERCRED, put in the scope by the protocol) is root, the daemon's own or in `admin_uids`."""

from __future__ import annotations

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from agent.errors import Forbidden, NotFound
from agent.serving.api import PinAnswer, PinRequest
from agent.serving.body import parse_json, receive_body
from agent.serving.envelope import json_response
from agent.serving.peers import is_admin, peer_uid
from agent.serving.state import AppState
from agent.values import Config

log = structlog.get_logger(__name__)

PIN_BODY_LIMIT = 64 * 1024


def register(app: FastAPI, state: AppState) -> None:
    """Add the admin routes to `app`."""
    runner = state.runner

    def require_admin(request: Request) -> int:
        uid = peer_uid(request.scope)
        if uid is None or not is_admin(uid, state.settings):
            log.warning("admin_refused", uid=uid, path=request.url.path)
            raise Forbidden(f"uid {uid} may not call admin routes (allowed: root, the daemon's uid, admin_uids)")
        return uid

    @app.post("/v1/pin", response_model=PinAnswer)
    async def pin(request: Request, _: int = Depends(require_admin)) -> Response:
        body = await receive_body(request.receive, request.headers.get("content-length"), PIN_BODY_LIMIT)
        req = parse_json(PinRequest, body or b"{}")
        made = runner.pin(Config.parse(req.config), req.seconds, req.reason)
        if state.pin_saved is not None:
            await state.pin_saved()
        return json_response(PinAnswer(config=str(made.config), until=made.until, reason=made.reason).model_dump())

    @app.delete("/v1/pin")
    async def unpin(_: int = Depends(require_admin)) -> Response:
        unpinned = runner.unpin("unpinned by admin")
        if state.pin_saved is not None:
            await state.pin_saved()
        return json_response({"unpinned": unpinned})

    @app.post("/v1/policy/reload")
    async def reload(_: int = Depends(require_admin)) -> Response:
        """Re-read the policy, re-check the zoo's files and the config; the work runs off the loop."""
        if state.reload is None:
            raise NotFound("reload is not available")
        return json_response(await state.reload())
