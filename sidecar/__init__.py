"""readiness-sidecar: probes a Pod's dependencies and serves their health to the kubelet."""

__version__ = "0.1.0"
