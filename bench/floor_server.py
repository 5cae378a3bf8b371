"""The thinnest HTTP server around the same model call, to tell what the daemon's stack costs
from what any Python server on this machine pays (transport, thread hand-off, waking up).

Not a server to use: one route, no errors, no limits. uvloop + httptools (the parser uvicorn
uses) on a Unix socket; each request's .npy body is decoded and run on `full`@1.0 in a worker
thread, and a small JSON answer is written. bench/overhead.py measures it side by side with the
daemon, with the same client and input.

    python -m bench.floor_server SOCKET
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import httptools
import numpy as np
import orjson
import uvloop

from agent.paths import default_zoo_dir
from agent.serving.codec import check_image_tensor, decode_npy
from agent.settings import Settings
from agent.zoo.sessions import LoadedVariant, SessionSettings, open_zoo


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
        x = check_image_tensor(decode_npy(body).astype(np.float32, copy=False))
        prediction = await asyncio.wrap_future(self.pool.submit(self.model.run, x, 1.0))
        out = orjson.dumps({"label": int(prediction.probs[0].argmax()), "queue_ms": 0.0, "compute_ms": 0.0})
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(out)
        self.transport.write(head + out)


async def serve(path: str) -> None:
    settings = Settings()
    zoo = open_zoo(default_zoo_dir(), SessionSettings(intra_threads=settings.ort_threads), names=["full"])
    pool = ThreadPoolExecutor(settings.workers)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: FloorProtocol(zoo.variants["full"], pool), path)
    print("listening", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1]))
