"""Where request bodies are decoded: never on the event loop, and never before their memory is
reserved.

Image headers, .npy arrays and small v2 JSON parts are decoded in a thread pool (Pillow and
numpy release the GIL for the heavy part; the pixels themselves are decoded later by the ORT
worker). A large v2 JSON part goes to a separate process: orjson's parse, pydantic's validation
of `list[Any]` and `np.asarray` of nested lists hold the GIL for their whole run (a 7 MB body of
nested arrays: 120 ms to over a second), and a thread holding the GIL stops the event loop just
as well as running on it. The process is started on the first such body, not before.

Every decode reserves its estimated peak (`agent.serving.codec`: `image_cost`, `json_cost`) in
the decode budget when it starts (`agent.serving.budget`): 413 past the per-request bound, 503
while the requests being decoded hold the rest.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from agent.serving.api import V2InferRequest
from agent.serving.budget import ByteBudget
from agent.serving.codec import json_cost
from agent.serving.priority import as_worker
from agent.serving.v2_codec import decode_v2_request

T = TypeVar("T")
#: A v2 JSON part up to this size is parsed in a thread: a few ms of GIL at most.
INLINE_JSON_BYTES = 64 * 1024
#: Processes that parse large v2 JSON parts (one at a time each).
JSON_PROCESSES = 1

V2Decoded = tuple[V2InferRequest, NDArray[np.float32] | NDArray[np.uint8]]


class Decoding:
    """The decode threads, the JSON process (started when first needed) and the decode budget."""

    def __init__(self, threads: int, budget: ByteBudget) -> None:
        self.budget = budget
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="decode", initializer=as_worker)
        self._processes: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    async def in_thread(self, work: Callable[..., T], *args: object) -> T:
        """`work(*args)` in a decode thread."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, work, *args)

    async def v2(self, head: bytes, binary: bytes, size: int, max_batch: int) -> V2Decoded:
        """A v2 request's JSON part and input tensor (`decode_v2_request`), decoded with the
        memory its JSON may cost reserved (the tensor's is the worker's to reserve)."""
        return await self.in_thread(self._decode_v2, head, binary, size, max_batch)

    def _decode_v2(self, head: bytes, binary: bytes, size: int, max_batch: int) -> V2Decoded:
        what = f"a v2 request of {len(head)} bytes of JSON"
        with self.budget.reserve(json_cost(head), what):
            if len(head) <= INLINE_JSON_BYTES:
                return decode_v2_request(head, binary, size, max_batch)
            return self._in_process(decode_v2_request, head, binary, size, max_batch)

    def _in_process(self, work: Callable[..., T], *args: object) -> T:
        """`work(*args)` in the JSON process, waited for in a decode thread (never on the loop)."""
        return self._process_pool().submit(work, *args).result()

    def _process_pool(self) -> Executor:
        with self._lock:
            if self._processes is None:
                # spawn: a fork of this process would copy its onnxruntime threads' state. A child
                # of `python -m agent` does not re-import the __main__ module (multiprocessing
                # skips a `*.__main__`), so it imports only the codec and its dependencies.
                self._processes = ProcessPoolExecutor(JSON_PROCESSES, mp_context=multiprocessing.get_context("spawn"))
            return self._processes

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._processes is not None:
                self._processes.shutdown(wait=False, cancel_futures=True)
