"""Metric families and their values after real probes, read from the sidecar's own registry."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrics import Metrics
from tests.conftest import make_config
from tests.servers.tcp import SilentListener, free_port


async def test_values_follow_probes(serve_sidecar):
    metrics = Metrics()
    with SilentListener() as listener:
        config = make_config(
            [
                {"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port},
                {"name": "orders", "type": "tcp", "host": "127.0.0.1", "port": free_port()},
            ],
            defaults={"interval": 0.2, "timeout": 0.1},
        )
        sidecar = await serve_sidecar(config, metrics)
        await sidecar.wait_for("/ready/db", 200)
        await sidecar.wait_for("/ready/orders", 503)

        def value(name: str, **labels: str) -> float:
            sample = metrics.registry.get_sample_value(name, labels)
            assert sample is not None, f"no sample {name}{labels}"
            return sample

        assert value("sidecar_check_up", check="db", type="tcp") == 1
        assert value("sidecar_check_up", check="orders", type="tcp") == 0
        assert value("sidecar_ready") == 0
        assert value("sidecar_started") == 0
        assert (
            value("sidecar_check_probes_total", check="orders", type="tcp", outcome="refused") >= 1
        )
        assert value("sidecar_check_probes_total", check="db", type="tcp", outcome="success") >= 1
        assert (
            value("sidecar_check_transitions_total", check="db", type="tcp", status="healthy") == 1
        )
        assert value("sidecar_check_consecutive_failures", check="orders", type="tcp") >= 1
        assert value("sidecar_check_last_success_timestamp_seconds", check="db", type="tcp") > 0
        assert value("sidecar_check_duration_seconds_count", check="db", type="tcp") >= 1
        assert value("sidecar_config_reload_failures_total") == 0
        assert value("sidecar_build_info", version=__import__("sidecar").__version__) == 1


async def test_exposition_parses(serve_sidecar):
    with SilentListener() as listener:
        config = make_config(
            [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port}]
        )
        sidecar = await serve_sidecar(config)
        await sidecar.wait_for("/ready", 200)

        status, body, headers = await sidecar.get("/metrics")

    names = {family.name for family in text_string_to_metric_families(body)}
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert {
        "sidecar_check_up",
        "sidecar_check_duration_seconds",
        "sidecar_check_probes",
        "sidecar_check_transitions",
        "sidecar_check_last_success_timestamp_seconds",
        "sidecar_ready",
        "sidecar_config_reload_failures",
    } <= names


def test_label_values_bounded():
    metrics = Metrics()
    metrics.add_check("db", "tcp")
    metrics.check_probes.labels("db", "tcp", "refused").inc()

    labels = {
        key
        for family in metrics.registry.collect()
        for sample in family.samples
        for key in sample.labels
    }

    assert labels <= {"check", "type", "outcome", "status", "le", "version"}


def test_remove_check_drops_series():
    metrics = Metrics()
    metrics.add_check("db", "tcp")
    metrics.check_probes.labels("db", "tcp", "refused").inc()
    metrics.check_transitions.labels("db", "tcp", "unhealthy").inc()

    metrics.remove_check("db", "tcp")

    checks = {
        sample.labels.get("check")
        for family in metrics.registry.collect()
        for sample in family.samples
    }
    assert "db" not in checks
