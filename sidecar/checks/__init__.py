"""The table of check kinds and the factory that builds a check from its config."""

from __future__ import annotations

from typing import Any

from sidecar.checks.base import Check, CheckResult, Reason, Resources, run_probe
from sidecar.checks.dns import DnsCheck
from sidecar.checks.http import HttpCheck
from sidecar.checks.mysql import MysqlCheck
from sidecar.checks.tcp import TcpCheck
from sidecar.config import CheckConfig

KINDS: dict[str, type[Check[Any]]] = {
    "tcp": TcpCheck,
    "dns": DnsCheck,
    "http": HttpCheck,
    "mysql": MysqlCheck,
}

__all__ = ["KINDS", "Check", "CheckResult", "Reason", "Resources", "create_check", "run_probe"]


def create_check(config: CheckConfig, resources: Resources) -> Check[Any]:
    """Build the check for one config entry."""
    return KINDS[config.kind](config, resources)
