"""The sidecar's own Prometheus registry and every metric it exports."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from sidecar import __version__

# Probe durations from a loopback ping (well under 1 ms) up to the largest sensible timeout.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Metric families on a private registry, so tests and reloads start from zero.

    Labels are `check` and `type` (names from the config), plus `outcome` (`success` or a
    failure reason) and `status` (`healthy` or `unhealthy`), all from bounded sets.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        labels = ("check", "type")
        self.check_up = Gauge(
            "sidecar_check_up",
            "1 when the check is healthy, 0 when unhealthy or pending.",
            labels,
            registry=self.registry,
        )
        self.check_duration = Histogram(
            "sidecar_check_duration_seconds",
            "Duration of each probe.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.check_probes = Counter(
            "sidecar_check_probes_total",
            "Probes run, by outcome: success or the failure reason.",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.check_transitions = Counter(
            "sidecar_check_transitions_total",
            "Status changes of a check, by the status it changed to.",
            (*labels, "status"),
            registry=self.registry,
        )
        self.check_consecutive_failures = Gauge(
            "sidecar_check_consecutive_failures",
            "Failed probes in a row; 0 after a success.",
            labels,
            registry=self.registry,
        )
        self.check_last_success = Gauge(
            "sidecar_check_last_success_timestamp_seconds",
            "Unix time of the last successful probe; 0 before the first one.",
            labels,
            registry=self.registry,
        )
        self.ready = Gauge(
            "sidecar_ready",
            "1 when /ready answers 200: every critical check is healthy.",
            registry=self.registry,
        )
        self.started = Gauge(
            "sidecar_started",
            "1 once every critical check has been healthy at least once.",
            registry=self.registry,
        )
        self.config_reload_failures = Counter(
            "sidecar_config_reload_failures_total",
            "Config reloads rejected because the new file was invalid.",
            registry=self.registry,
        )
        self.build_info = Info(
            "sidecar_build", "Version of readiness-sidecar.", registry=self.registry
        )
        self.build_info.info({"version": __version__})

    def add_check(self, name: str, kind: str) -> None:
        """Create a check's series at zero, so dashboards see them before the first probe."""
        self.check_up.labels(name, kind).set(0)
        self.check_consecutive_failures.labels(name, kind).set(0)
        self.check_last_success.labels(name, kind).set(0)
        self.check_probes.labels(name, kind, "success")
        self.check_duration.labels(name, kind)

    def remove_check(self, name: str, kind: str) -> None:
        """Drop every series of a check that is no longer configured."""
        self.check_up.remove(name, kind)
        self.check_consecutive_failures.remove(name, kind)
        self.check_last_success.remove(name, kind)
        self.check_duration.remove(name, kind)
        for counter in (self.check_probes, self.check_transitions):
            # prometheus-client removes one label set at a time, so find this check's sets.
            for labels in list(counter._metrics):
                if labels[:2] == (name, kind):
                    counter.remove(*labels)
