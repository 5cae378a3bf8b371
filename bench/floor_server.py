"""The thinnest HTTP servers around the same model call, to tell what the daemon's stack costs
from what any Python server on this machine pays (transport, thread hand-off, waking up).

Not servers to use: one route, no errors, no limits. Each request's .npy body is decoded and
run on `full`@1.0 in a worker thread, and a small JSON answer with the model's own queue and
compute time is written. Two floors:

    bare     uvloop + httptools (the parser uvicorn uses) and nothing else
    uvicorn  the same call as a bare ASGI app under uvicorn (httptools, uvloop): what the
             daemon's server costs before any of the daemon's own code runs

bench/overhead.py measures them side by side with the daemon, with the same client and input.

    python -m bench.floor_server SOCKET [--uvicorn]
"""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import httptools
import numpy as np
import orjson
import uvicorn
import uvloop
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.paths import default_zoo_dir
from agent.serving.codec import check_image_tensor, decode_npy
from agent.settings import Settings
from agent.zoo.sessions import LoadedVariant, Prediction, SessionSettings, open_zoo


class FloorProtocol(asyncio.Protocol):
    def __init__(self, model: LoadedVariant, pool: ThreadPoolExecutor) -> None:
        self.model, self.pool = model, pool
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        asyncio.get_running_loop().create_task(self.answer(body))

    async def answer(self, body: bytes) -> None:
        out = await answer(self.model, self.pool, body)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(out)
        self.transport.write(head + out)


def timed_run(model: LoadedVariant, x: np.ndarray) -> tuple[float, Prediction, float]:
    """The model's run with its start and end, so a floor's answer reports the same queue and
    compute times as the daemon's (bench/overhead's `outside model` column)."""
    started = time.perf_counter()
    prediction = model.run(x, 1.0)
    return started, prediction, time.perf_counter()


async def answer(model: LoadedVariant, pool: ThreadPoolExecutor, body: bytes) -> bytes:
    x = check_image_tensor(decode_npy(body).astype(np.float32, copy=False))
    queued = time.perf_counter()
    started, prediction, done = await asyncio.wrap_future(pool.submit(timed_run, model, x))
    label = int(prediction.probs[0].argmax())
    return orjson.dumps({"label": label, "queue_ms": (started - queued) * 1000, "compute_ms": (done - started) * 1000})


def asgi_floor(model: LoadedVariant, pool: ThreadPoolExecutor) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        out = await answer(model, pool, b"".join(chunks))
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


async def serve(path: str, under_uvicorn: bool) -> None:
    settings = Settings()
    zoo = open_zoo(default_zoo_dir(), SessionSettings(intra_threads=settings.ort_threads), names=["full"])
    model, pool = zoo.variants["full"], ThreadPoolExecutor(settings.workers)
    if under_uvicorn:
        config = uvicorn.Config(
            asgi_floor(model, pool), uds=path, http="httptools", lifespan="off", access_log=False, log_config=None
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        print("listening", flush=True)
        await serving
        return
    listening = await asyncio.get_running_loop().create_unix_server(lambda: FloorProtocol(model, pool), path)
    print("listening", flush=True)
    await listening.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1], "--uvicorn" in sys.argv[2:]))
