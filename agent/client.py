"""A small client for the daemon's Unix-socket API (httpx)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from agent.paths import default_socket

CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".webp": "image/webp",
    ".npy": "application/x-npy",
}


class ClientError(Exception):
    """An error answer from the daemon, with its stable code and HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, socket: Path | None = None, timeout: float = 30.0) -> None:
        self.socket = socket or default_socket()
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://edge-agent", timeout=timeout
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                raise ClientError(response.status_code, err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise ClientError(response.status_code, "http_error", response.text[:200]) from None
        return response

    def classify(
        self,
        data: bytes | Path | np.ndarray,
        content_type: str | None = None,
        deadline_ms: float | None = None,
        explain: bool = False,
    ) -> dict[str, Any]:
        """Classify an image file, raw bytes (give `content_type`) or a float32 (3, H, W) array."""
        if isinstance(data, Path):
            content_type = content_type or CONTENT_TYPES.get(data.suffix.lower(), "application/octet-stream")
            data = data.read_bytes()
        elif isinstance(data, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, data.astype(np.float32), allow_pickle=False)
            data, content_type = buf.getvalue(), "application/x-npy"
        params: dict[str, Any] = {}
        if deadline_ms is not None:
            params["deadline_ms"] = deadline_ms
        if explain:
            params["explain"] = "true"
        response = self._http.post(
            "/v1/classify",
            content=data,
            params=params,
            headers={"content-type": content_type or "application/octet-stream"},
        )
        return self._check(response).json()

    def status(self) -> dict[str, Any]:
        return self._check(self._http.get("/v1/status")).json()

    def metrics(self) -> str:
        return self._check(self._http.get("/metrics")).text

    def pin(self, config: str, seconds: float, reason: str = "maintenance") -> dict[str, Any]:
        body = {"config": config, "seconds": seconds, "reason": reason}
        return self._check(self._http.post("/v1/pin", json=body)).json()

    def unpin(self) -> dict[str, Any]:
        return self._check(self._http.delete("/v1/pin")).json()

    def reload(self) -> dict[str, Any]:
        return self._check(self._http.post("/v1/policy/reload")).json()

    def ready(self) -> bool:
        try:
            return self._http.get("/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False
