"""Prometheus metrics of one daemon, in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest

from agent.telemetry.snapshot import Snapshot

_LATENCY_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.030, 0.050, 0.075, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edge_agent_requests_total", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.inference_seconds = Histogram(
            "edge_agent_inference_seconds",
            "Queue + decode + model time of answered inferences",
            ["variant"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "edge_agent_queue_seconds", "Time waiting for a worker", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.decode_seconds = Histogram(
            "edge_agent_decode_seconds",
            "Time turning a request body into the model's input (decode, crop, resize)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "edge_agent_model_seconds", "Time running the model", ["variant"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.shed = Counter("edge_agent_shed_total", "Requests refused with 503", ["reason"], registry=r)
        self.inflight = Gauge("edge_agent_inflight_requests", "Admitted requests not yet finished", registry=r)
        self.switches = Counter("edge_agent_config_switches_total", "Configuration switches", registry=r)
        self.config = Gauge(
            "edge_agent_config_info", "The configuration in force (1)", ["variant", "budget"], registry=r
        )
        self.variants_loaded = Gauge("edge_agent_variants_loaded", "Variants loaded and verified", registry=r)
        self.variant_failures = Gauge("edge_agent_variant_load_failures", "Variants that failed to load", registry=r)
        self.errors = Counter("edge_agent_errors_total", "Errors answered, by code", ["code"], registry=r)
        self.ready = Gauge("edge_agent_ready", "1 when serving, 0 while starting or draining", registry=r)
        self._control_metrics(r)
        self.telemetry = Gauge("edge_agent_telemetry", "Latest telemetry reading", ["field"], registry=r)

    def _control_metrics(self, r: CollectorRegistry) -> None:
        """The policy's and the controller's: what is in force, how it does, why it chose."""
        self.policy_reload_failures = Counter(
            "edge_agent_policy_reload_failures_total",
            "Policy files refused (last good kept), by reason: invalid, or signature (trusted_keys)",
            ["reason"],
            registry=r,
        )
        for reason in ("invalid", "signature"):
            self.policy_reload_failures.labels(reason=reason)  # both series from the start, at 0
        self.signatures_required = Gauge(
            "edge_agent_signatures_required",
            "1 when trusted_keys is set: the zoo manifest and policy must be signed by a trusted key",
            registry=r,
        )
        self.attainment = Gauge(
            "edge_agent_slo_attainment", "Share of requests within the SLO over the policy window", registry=r
        )
        self.slo_ms = Gauge("edge_agent_slo_latency_ms", "The latency SLO in force, ms", registry=r)
        self.slo_target = Gauge(
            "edge_agent_slo_target",
            "Share of requests the SLO wants within its latency: the policy's percentile / 100 (attainment's target)",
            registry=r,
        )
        self.last_decision = Gauge(
            "edge_agent_controller_last_decision_timestamp_seconds",
            "Wall-clock time of the controller's last decision (kept or switched), Unix seconds",
            registry=r,
        )
        self.policy_refused = Gauge(
            "edge_agent_policy_refused",
            "1 while the policy file on disk is refused and the last good policy stays in force",
            registry=r,
        )
        self.slowdown = Gauge(
            "edge_agent_controller_slowdown",
            "Estimated factor by which the models run slower than profiled (latency model)",
            registry=r,
        )
        self.overhead = Gauge(
            "edge_agent_controller_overhead_seconds",
            "Estimated per-request time outside the model and decoding (queueing, scheduling), latency model",
            registry=r,
        )
        self.accuracy_table = Enum(
            "edge_agent_accuracy_table",
            "The accuracy table configurations are ranked by",
            states=["test", "shifted", "site"],
            registry=r,
        )
        self.decode_term = Gauge(
            "edge_agent_controller_decode_seconds",
            "Median decode time of recent requests, added to every configuration's predicted latency",
            registry=r,
        )

    def set_telemetry(self, snapshot: Snapshot) -> None:
        values = {
            "cpu_percent": snapshot.cpu_percent,
            "load_avg_1m": snapshot.load_avg_1m,
            "temperature_c": snapshot.temperature_c,
            "battery_percent": snapshot.battery_percent,
            "on_ac": None if snapshot.on_ac is None else float(snapshot.on_ac),
            "memory_percent": snapshot.memory_percent,
        }
        for name, value in values.items():
            if value is not None:
                self.telemetry.labels(field=name).set(value)

    def set_config(self, variant: str, budget: float) -> None:
        self.config.clear()
        self.config.labels(variant=variant, budget=f"{budget:g}").set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
