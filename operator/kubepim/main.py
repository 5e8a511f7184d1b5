"""Entry point: configure logging and run the kopf operator with kubepim's handlers."""

from __future__ import annotations

import importlib.metadata
import logging

import kopf
import prometheus_client

from . import handlers, logs, metrics
from .settings import Settings


def main() -> None:
    """Run the operator in the foreground until SIGINT or SIGTERM."""
    settings = Settings()
    logs.configure(settings.log_level, frozenset(handlers.admission.HANDLER_IDS))
    if settings.log_level != "DEBUG":
        # One line per handler call and per webhook hit drowns the audit lines; keep warnings.
        for noisy in ("kopf.objects", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if settings.metrics_port:
        metrics.BUILD_INFO.info({"version": _version()})
        prometheus_client.start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.REGISTRY)
    liveness = None
    if settings.liveness_port:
        liveness = f"http://{settings.liveness_host}:{settings.liveness_port}/healthz"
    kopf.run(
        clusterwide=True,
        standalone=True,
        liveness_endpoint=liveness,
        registry=handlers.registry,
        memo=kopf.Memo(settings=settings),
    )


def _version() -> str:
    try:
        return importlib.metadata.version("kubepim")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
