"""Entry point: configure logging and run the kopf operator with kubepim's handlers."""

from __future__ import annotations

import logging

import kopf

from . import handlers
from .settings import Settings


def main() -> None:
    """Run the operator in the foreground until SIGINT or SIGTERM."""
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
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
