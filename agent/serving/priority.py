"""CPU priority of the daemon's own threads.

On a gateway whose cores are all busy (the ORT workers, other services), the event loop is
what answers a refusal, a status call or the watchdog. It needs little CPU but needs it at
once: a nice value below the workers' lets the scheduler give it a core the moment a request
arrives, instead of after a worker's time slice. Linux keeps a nice value per thread and a new
thread inherits its creator's, so workers started from the loop reset theirs (`as_worker`).
Lowering a nice value needs root, CAP_SYS_NICE or RLIMIT_NICE (the unit's LimitNICE=).
"""

from __future__ import annotations

import os
import threading

import structlog

log = structlog.get_logger(__name__)

BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)  # the process's, as it was started


def set_thread_nice(value: int) -> bool:
    """Give the calling thread nice `value`; False (logged) where the system refuses, which is
    normal for an unprivileged user without RLIMIT_NICE: everything then runs at one priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), value)
    except OSError as exc:
        log.info("thread_priority_unchanged", nice=value, base=BASE_NICE, error=exc.strerror)
        return False
    return True


def as_worker() -> None:
    """Executor initializer: a worker runs at the process's own priority, whatever its creator's."""
    tid = threading.get_native_id()
    if os.getpriority(os.PRIO_PROCESS, tid) != BASE_NICE:
        set_thread_nice(BASE_NICE)
    name = threading.current_thread().name
    log.info("worker_started", tid=tid, name=name, nice=os.getpriority(os.PRIO_PROCESS, tid))
