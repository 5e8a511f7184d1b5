"""kopf handlers and admission webhooks: glue from cluster events to domain decisions to k8s calls.

All handlers register on :data:`registry`, so the operator (and tests) run exactly this set.
"""

from __future__ import annotations

import kopf

registry = kopf.OperatorRegistry()

# Importing the modules registers their handlers on the registry.
from . import (  # noqa: E402,F401
    admission,
    eligibilities,
    lifecycle,
    notifications,
    requests,
    reviews,
)
