"""The daemon's lifecycle: load and warm the zoo, listen, serve, reload, drain, stop.

Signal handlers only set state; the event loop acts on it (as uvicorn's Server does). The
daemon handles SIGTERM itself, so after a clean drain the process exits 0 instead of dying
by the re-raised signal (uvicorn's own handlers would end it with status 143).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import structlog
import uvloop
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import Gauge

from agent.address import ListenAddress
from agent.daemon import sdnotify, servers
from agent.daemon.adaptive import AdaptiveLoop
from agent.daemon.clock import StepWatch, WallClock
from agent.daemon.logs import configure_logging
from agent.daemon.pin_file import PinWriter, load_pin
from agent.daemon.preflight import policy_file_problem, raise_fd_limit
from agent.daemon.state_dir import StateDir
from agent.errors import AgentError
from agent.paths import state_dir
from agent.policy.store import ReloadResult
from agent.serving.admission import Clock
from agent.serving.codec import MMAP_THRESHOLD_BYTES, fix_mmap_threshold, load_image_plugins
from agent.serving.listener import bind_unix, remove_socket, socket_identity, systemd_sockets
from agent.serving.metrics import Metrics
from agent.serving.metrics_app import PATHS as METRICS_PATHS
from agent.serving.priority import BASE_NICE, set_thread_nice
from agent.serving.runner import Runner
from agent.serving.state import AppState
from agent.settings import LIVE_SETTINGS, Settings, load_settings
from agent.telemetry.sources import GuardedSource, make_source
from agent.trust import SignatureError, TrustedKeys, load_trusted_keys
from agent.values import Config, Switch
from agent.zoo.sessions import SessionSettings, open_zoo, recheck_files

log = structlog.get_logger(__name__)


class Daemon:
    def __init__(
        self, settings: Settings, config_file: Path | None = None, overrides: dict[str, Any] | None = None
    ) -> None:
        self.settings = settings
        self.config_file = config_file
        self.overrides = overrides or {}
        self.wall = WallClock(settings.wall_clock_offset_file)
        self.steps = StepWatch(self.wall)
        self.state_dir = StateDir(settings.state_dir or state_dir())
        self.metrics = Metrics()
        self.connection_timeouts = servers.timeouts_counter(self.metrics.registry)
        Gauge(
            "edge_agent_state_dir_writable",
            "1 while the state directory takes the daemon's writes (pin.json); 0: read-only, full or refused",
            registry=self.metrics.registry,
        ).set_function(lambda: self.state_dir.problem is None)
        self.server: servers.Server | None = None
        self.metrics_server: servers.Server | None = None  # the TCP listener of `metrics_listen`, if set
        self.state: AppState | None = None
        self.adaptive: AdaptiveLoop | None = None
        self._signatures: dict[str, Any] = {"required": False}
        self._stop_signal: int | None = None
        self._reload_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._pins = PinWriter(self.state_dir.path / "pin.json", self.state_dir.wrote)

    # -- start ------------------------------------------------------------------------------

    def _load(self) -> AppState:
        s = self.settings
        trust = self._trusted_keys()
        sdnotify.notify("STATUS=loading model zoo")
        zoo = open_zoo(s.zoo, SessionSettings(intra_threads=s.ort_threads), check=trust.check if trust else None)
        self.metrics.variants_loaded.set(len(zoo.variants))
        self.metrics.variant_failures.set(len(zoo.failures))
        if not zoo.variants:
            raise AgentError(f"no variant of {s.zoo} could be loaded: {zoo.failures}")
        initial = Config(s.default_variant, s.default_budget)
        if initial.variant not in zoo.variants:
            initial = Config(next(iter(zoo.variants)), 1.0)
            log.warning("default_variant_unavailable", wanted=s.default_variant, using=str(initial))
        runner = Runner(zoo, initial, s.workers, s.queue_size, s.window_s, Clock(wall=self.wall))
        sdnotify.notify("STATUS=warming up")
        started = time.perf_counter()
        runner.warm_up(s.warmup_runs)
        load_image_plugins()
        log.info(
            "zoo_ready",
            variants=sorted(zoo.variants),
            failed=zoo.failures,
            warmup_ms=round((time.perf_counter() - started) * 1000, 1),
            workers=s.workers,
            ort_threads=s.ort_threads,
        )
        runner.on_switch.append(self._switched)
        runner.on_pin.append(lambda _: self._save_pin())
        self.metrics.set_config(initial.variant, initial.budget)
        telemetry = GuardedSource(make_source(s), s.telemetry_interval_s)
        self.adaptive = AdaptiveLoop(runner, telemetry, s.policy, self.metrics, s.ort_threads, s.state_dir, trust)
        if self.adaptive.store.last_error_code == SignatureError.code:
            raise SignatureError(self.adaptive.store.last_error or "policy signature refused")
        if self.adaptive.store.last_error:
            log.error("policy_invalid_at_start", error=self.adaptive.store.last_error, using="built-in fallback policy")
        missing = self.adaptive.missing_profile()
        if missing:
            raise AgentError(missing)
        self.adaptive.sample_telemetry()
        state = AppState(settings=s, zoo=zoo, runner=runner, metrics=self.metrics)
        state.reload = self.reload
        self._signatures = trust.status() if trust else {"required": False}
        state.extra_status = self._status
        state.pin_saved = self._pins.saved
        self._restore_pin(runner)
        return state

    def _trusted_keys(self) -> TrustedKeys | None:
        """The `trusted_keys` setting's public keys (None: signatures are not required); a key
        file that cannot be read refuses the start rather than trusting nothing or everything."""
        if not self.settings.trusted_keys:
            log.info("signatures_not_required")
            return None
        trust = load_trusted_keys(self.settings.trusted_keys)
        self.metrics.signatures_required.set(1)
        log.info("signatures_required", keys=trust.ids)
        return trust

    def _status(self) -> dict[str, Any]:
        assert self.adaptive is not None
        return {
            **self.adaptive.status(),
            "signatures": self._signatures,
            "clock": self.steps.status(),
            "state_dir": self.state_dir.status(),
        }

    def _switched(self, record: Switch) -> None:
        self.metrics.switches.inc()
        current = self.state.runner.current if self.state else Config.parse(record.new)
        self.metrics.set_config(current.variant, current.budget)
        sdnotify.notify(f"STATUS=serving {record.new} ({record.reason})")
        self._save_pin()

    # -- pin persistence: a maintenance pin survives a restart ------------------------------------

    def _save_pin(self) -> None:
        if self.state is not None:
            self._pins.save(self.state.runner.pin_state)

    def _restore_pin(self, runner: Runner) -> None:
        pin = load_pin(self._pins.path)
        if pin is not None and pin.until > self.wall() and runner.restore_pin(pin):
            log.info("pin_restored", config=str(pin.config), until=pin.until)

    # -- reload (SIGHUP, POST /v1/policy/reload) ------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """SIGHUP and POST /v1/policy/reload: re-read the policy (last good kept on error), check
        the zoo's files against the manifest again (a changed or vanished one goes out of service)
        and re-read the config file (settings that need a restart are reported, not applied).
        Reading and hashing run in a thread, so requests are served meanwhile; the results are
        applied on the event loop. Reloads run one at a time."""
        async with self._reload_lock:
            sdnotify.reloading()
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(None, self._read_for_reload)
            return self._apply_reload(*found)

    def _read_for_reload(self) -> tuple[ReloadResult | None, dict[str, str | None], Settings | AgentError]:
        """The slow part of a reload, off the loop: the policy file, the zoo's hashes, the config."""
        policy = self.adaptive.reload_policy("reload requested") if self.adaptive is not None else None
        files = recheck_files(self.state.runner.zoo) if self.state is not None else {}
        try:
            fresh: Settings | AgentError = load_settings(self.config_file, **self.overrides)
        except AgentError as exc:
            fresh = exc
        return policy, files, fresh

    def _apply_reload(
        self, policy: ReloadResult | None, files: dict[str, str | None], fresh: Settings | AgentError
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {"reloaded": True}
        if self.adaptive is not None and policy is not None:
            answer["reloaded"] = policy.ok
            answer["policy"] = self.adaptive.store.status()
            if not policy.ok:
                answer["error"] = policy.error
                if self.state:
                    self.state.last_error = policy.error
            retired = self.adaptive.apply_recheck(files)
            answer["out_of_service"] = retired
            if retired and self.state:
                self.state.last_error = "; ".join(retired.values())
        if isinstance(fresh, AgentError):
            log.error("config_reload_failed", error=fresh.message)
            answer.update(reloaded=False, config_error=fresh.message)
        else:
            answer.update(self._apply_settings(fresh))
        current = self.state.runner.current if self.state else ""
        sdnotify.notify(
            "READY=1", f"STATUS=serving {current}" + ("" if answer["reloaded"] else " (last reload failed)")
        )
        return answer

    def _apply_settings(self, fresh: Settings) -> dict[str, Any]:
        """Apply the settings that can change live; report the others as needing a restart."""
        old = self.settings.model_dump()
        changed = sorted(k for k, v in fresh.model_dump().items() if v != old.get(k))
        for key in changed:
            if key in LIVE_SETTINGS:
                setattr(self.settings, key, getattr(fresh, key))
        need_restart = [k for k in changed if k not in LIVE_SETTINGS]
        log.info("config_reloaded", changed=changed, need_restart=need_restart)
        return {"config_changed": changed, "need_restart": need_restart}

    # -- run ------------------------------------------------------------------------------------------

    def _on_listening(self) -> None:
        assert self.state is not None
        self.state.ready = True
        self.metrics.ready.set(1)
        sdnotify.notify("READY=1", f"STATUS=serving {self.state.runner.current} on {self.settings.socket}")
        log.info("listening", socket=str(self.settings.socket), pid=os.getpid())

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested.set()  # the reloader task does the work
            return
        if self.server is None:
            return
        if self.server.should_exit and signum == signal.SIGINT:
            self.server.force_exit = True
            if self.metrics_server is not None:
                self.metrics_server.force_exit = True
            return
        self._stop_signal = signum
        self.server.should_exit = True
        if self.state:
            self.state.draining = True
        self.metrics.ready.set(0)
        sdnotify.notify("STOPPING=1", "STATUS=draining")
        log.info(
            "stopping", signal=signal.Signals(signum).name, inflight=self.state.runner.inflight if self.state else 0
        )

    def _jobs(self) -> list[tuple[str, Any, float]]:
        """Every periodic job, in one place. Coroutines run on the event loop (so a hung loop
        stops the watchdog pings); plain functions run in the scheduler's thread pool (so a
        slow sensor read cannot stall requests)."""
        assert self.state is not None and self.adaptive is not None
        runner, adaptive, s = self.state.runner, self.adaptive, self.settings

        async def controller_tick() -> None:
            adaptive.tick()

        async def policy_watch() -> None:
            adaptive.watch_policy()

        async def pin_expiry() -> None:
            if self.steps.check() is not None:
                runner.restate_pin()  # same time left; pin.json says `until` on the new wall clock
            runner.expire_pin()

        async def state_watch() -> None:
            await asyncio.get_running_loop().run_in_executor(None, self.state_dir.check)
            if self.state_dir.retry:
                self._save_pin()

        async def watchdog() -> None:
            sdnotify.notify("WATCHDOG=1")

        jobs: list[tuple[str, Any, float]] = [
            ("telemetry_sample", adaptive.sample_telemetry, s.telemetry_interval_s),
            ("controller_tick", controller_tick, s.controller_interval_s),
            ("policy_watch", policy_watch, s.policy_watch_s),
            ("pin_expiry", pin_expiry, 1.0),
            ("state_watch", state_watch, s.policy_watch_s),
        ]
        interval = sdnotify.watchdog_interval_s()
        if interval:
            jobs.append(("watchdog", watchdog, interval))
        return jobs

    async def _serve(self, sock: socket.socket, metrics_sock: socket.socket | None) -> None:
        loop = asyncio.get_running_loop()
        boost = self.settings.loop_priority
        if boost and set_thread_nice(BASE_NICE - boost):
            log.info("loop_priority_raised", nice=BASE_NICE - boost, workers_nice=BASE_NICE)
            assert self.state is not None
            self.state.loop_priority = boost
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        scheduler = AsyncIOScheduler(event_loop=loop)
        for job_id, func, seconds in self._jobs():
            scheduler.add_job(func, "interval", seconds=seconds, id=job_id, max_instances=1, coalesce=True)
        scheduler.start()
        reloader = asyncio.create_task(self._reloader())
        metrics = None
        if self.metrics_server is not None and metrics_sock is not None:
            metrics = asyncio.create_task(self.metrics_server.serve(sockets=[metrics_sock]))
        try:
            assert self.server is not None
            await self.server.serve(sockets=[sock])
        finally:
            reloader.cancel()
            scheduler.shutdown(wait=False)
            if metrics is not None and self.metrics_server is not None:
                # Kept until the drain is over, so a scrape sees edge_agent_ready 0 meanwhile.
                self.metrics_server.should_exit = True
                await metrics

    async def _reloader(self) -> None:
        """Runs a reload each time SIGHUP has set the flag (several signals meanwhile: one reload)."""
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            try:
                await self.reload()
            except Exception:
                log.exception("reload_failed")

    def _metrics_listening(self) -> None:
        assert self.state is not None
        log.info("metrics_listening", address=self.state.metrics_address, paths=list(METRICS_PATHS))

    def run(self) -> int:
        s = self.settings
        identity: tuple[int, int] | None = None
        metrics_sock: socket.socket | None = None
        raise_fd_limit()
        log.info("mmap_threshold", fixed=fix_mmap_threshold(), bytes=MMAP_THRESHOLD_BYTES)
        try:
            activated = systemd_sockets()
            self.state = self._load()
            metrics_sock = servers.metrics_socket(s.metrics_listen, activated.metrics)
            if metrics_sock is not None:
                self.state.metrics_address = str(ListenAddress(*metrics_sock.getsockname()[:2]))
            if activated.api is not None:
                sock = activated.api
                log.info("socket_activated", fd=sock.fileno())
            else:
                sock = bind_unix(s.socket, s.socket_mode)
                identity = socket_identity(s.socket)
        except AgentError as exc:
            if metrics_sock is not None:
                metrics_sock.close()
            log.error("start_failed", error=exc.message)
            sdnotify.notify(f"STATUS=failed: {exc.message}")
            return 1
        limits = servers.connection_limits(s, lambda phase: self.connection_timeouts.labels(phase=phase).inc())
        self.server = servers.Server(servers.api_config(s, self.state, self.metrics, limits), self._on_listening)
        if metrics_sock is not None:
            self.metrics_server = servers.Server(
                servers.metrics_config(self.state, self.metrics, limits), self._metrics_listening
            )
        # What start-up made (the zoo, the app, pydantic's schemas) lives as long as the daemon:
        # kept out of the collector's generations, a full collection amid a flood of connections
        # walks only what requests made, not tens of thousands of long-lived objects.
        gc.freeze()
        try:
            # uvicorn.Config(loop=...) only applies inside uvicorn.run(); the loop is chosen here.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
                loop_runner.run(self._serve(sock, metrics_sock))
        finally:
            self.state.runner.close(wait=True)
            self.state.decoding.close()
            self._pins.close()
            if identity is not None:
                remove_socket(s.socket, identity)
        log.info("stopped", signal=signal.Signals(self._stop_signal).name if self._stop_signal else None)
        return 0


def serve(config_file: Path | None = None, **overrides: Any) -> int:
    """`edge-agent serve`: exit status 2 (which the unit does not retry) for a configuration
    that cannot work, 1 for a failed start, 0 after a clean stop."""
    try:
        settings = load_settings(config_file, **overrides)
    except AgentError as exc:
        configure_logging()
        log.error("config_invalid", error=exc.message)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    problem = policy_file_problem(settings.policy)
    if problem:
        log.error("policy_missing", path=str(settings.policy), error=problem)
        sdnotify.notify(f"STATUS=failed: {problem}")
        return 2
    return Daemon(settings, config_file, overrides).run()
