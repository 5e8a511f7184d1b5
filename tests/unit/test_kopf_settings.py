"""What the operator's kopf settings rely on."""

from __future__ import annotations

import kopf

from kubepim.handlers import registry
from kubepim.handlers.lifecycle import NoDiffBase


def test_no_handler_needs_a_diff_base_so_none_is_built() -> None:
    # NoDiffBase skips kopf's per-event deep copy of every body: safe only while no handler
    # detects changes (on.create/update/delete/resume, daemons, timers). Adding one means
    # going back to kopf.StatusDiffBaseStorage.
    assert registry._changing.get_all_handlers() == []
    assert registry._spawning.get_all_handlers() == []
    assert registry._watching.get_all_handlers()  # the on.event handlers it does have
    storage = NoDiffBase()
    body = kopf.Body({"metadata": {"name": "r"}, "spec": {"a": 1}, "status": {"history": [1]}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
