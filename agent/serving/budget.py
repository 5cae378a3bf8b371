"""Byte budgets: how much memory one request, and all requests together, may claim before any
of it is allocated.

A small body can ask for a large allocation (a 155 KB PNG decodes to 160 MB of RGBA, a 7 MB
JSON tensor to 160 MB of Python lists), and a body being received holds what it declared. Each
such cost is estimated from what is known before the work (a header, a byte count) and checked
at once: a request over the per-request bound is refused with 413. It is reserved when the work
starts (a queued image holds its compressed bytes, not its pixels): one that would take the
total past its bound gets 503 and Retry-After; the reservation is given back when the work ends.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from agent.errors import Overloaded, PayloadTooLarge

MIB = 1024 * 1024


def mib(n: float) -> str:
    """`n` bytes as MiB for a message: 480.1 MiB."""
    return f"{n / MIB:.1f} MiB"


@dataclass
class Reservation:
    """Bytes held in a budget until `release` (once; later calls do nothing). Thread-safe, so a
    worker may release what the event loop reserved."""

    budget: ByteBudget
    nbytes: int
    _released: bool = False

    def release(self) -> None:
        self.budget._give_back(self)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


@dataclass
class ByteBudget:
    """`per_request` bytes for one request and `total` for all together; `what` names the budget
    in refusals and `setting` the settings that raise it."""

    what: str
    per_request: int
    total: int
    setting: str
    in_use: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, nbytes: int, detail: str) -> int:
        """`nbytes`, or PayloadTooLarge (413) past the per-request bound: the check made as soon
        as the cost is known, before the request waits for anything."""
        nbytes = max(0, int(nbytes))
        if nbytes > self.per_request:
            raise PayloadTooLarge(
                f"{detail} would take {mib(nbytes)} of {self.what}; the limit is {mib(self.per_request)} "
                f"per request ({self.setting})"
            )
        return nbytes

    def reserve(self, nbytes: int, detail: str) -> Reservation:
        """Hold `nbytes`, or refuse: PayloadTooLarge (413) past the per-request bound, Overloaded
        (503, Retry-After) while the others in flight leave too little. `detail` says what costs it."""
        nbytes = self.check(nbytes, detail)
        with self._lock:
            if self.in_use + nbytes > self.total:
                in_use = self.in_use
            else:
                self.in_use += nbytes
                return Reservation(self, nbytes)
        raise Overloaded(
            f"{detail} needs {mib(nbytes)} of {self.what} and requests in flight hold {mib(in_use)} of "
            f"{mib(self.total)}; try again shortly",
            retry_after_s=1.0,
        )

    def _give_back(self, reservation: Reservation) -> None:
        with self._lock:
            if not reservation._released:
                reservation._released = True
                self.in_use -= reservation.nbytes
