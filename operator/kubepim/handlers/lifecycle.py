"""Operator start-up: kopf settings that every other handler relies on."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import registry

logger = logging.getLogger(__name__)


@kopf.on.startup(registry=registry)
async def operator_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's bookkeeping out of user-owned metadata and make posting predictable."""
    # GitOps tools own the objects' metadata: kopf's progress and diff-base go in status.
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    settings.posting.level = logging.INFO
    logger.info("kubepim operator started")


@kopf.on.login(registry=registry)
def operator_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Authenticate as the pod's ServiceAccount in a cluster, else from the kubeconfig."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
