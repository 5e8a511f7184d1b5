"""Standing privilege, watched by the leader (issue 16): a gauge, Warning Events, audit lines.

A full scan reads Roles and ClusterRoles, then every binding kubepim did not make in pages of
500, classified page by page (domain/standing.py). It keeps the role rules (in the Scanner)
and one severity per privileged binding (by uid), never the bindings: memory stays flat in a
cluster of 50,000 foreign RoleBindings (issue 13). Between scans a watch of those bindings,
from the scan's resourceVersion, classifies each added, changed or deleted binding alone: a new
cluster-admin binding is counted and told within a second. A Role or ClusterRole change (the
role watch the operator already has) brings the next full scan forward; otherwise one runs
every ``standing_scan_seconds``. Only the leader scans; a standby exports no count.

A critical binding is told once per process: a JSON audit line (id: the binding's uid and a
digest of who holds what through it, so a restart repeats the id and a consumer keeps the
first) and a Warning Event on the binding under a name made of the same, which a repeat finds
taken (409) with the same words and leaves alone; taken with other words (a squatter), ours is
posted under a generated name (docs/threats.md #6). Events expire: the line is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp

from kubepim import audit, metrics
from kubepim.api.eligibility import RoleEligibilitySpec
from kubepim.domain import standing
from kubepim.domain.standing import Finding, Scanner, Severity
from kubepim.engine.queue import WorkQueue
from kubepim.engine.state import State
from kubepim.k8s.client import FOREIGN_SELECTOR, ApiError, Gone, Kube, NotLeading

from .reconcile import utcnow

logger = logging.getLogger(__name__)

_BINDINGS = (("ClusterRoleBinding", "clusterrolebindings"), ("RoleBinding", "rolebindings"))
# A burst of role changes (a chart installed, an aggregation updated) makes one scan, not many.
_SETTLE_SECONDS = 2.0
_MIN_GAP_SECONDS = 30.0


class StandingWatch:
    """The leader's inventory of privileged standing bindings, kept current.

    ``reader``: a client on its own connections (a long watch must not hold one of the
    reconciler's); ``writer``: the reconciler's fenced client, for Events. ``state``: the
    reconciler's state (namespace labels); ``eligibilities``: the reconciler's (listed if not
    yet), to say what already covers a finding.
    """

    def __init__(self, reader: Kube, writer: Kube, state: State,
                 eligibilities: Callable[[], Awaitable[Mapping[str, RoleEligibilitySpec]]],
                 leading: Callable[[], bool], interval: float,
                 include_system: bool = False, accepted: Iterable[str] = (),
                 queue: WorkQueue | None = None,
                 caught_up: asyncio.Event | None = None) -> None:
        self._reader, self._writer, self._state = reader, writer, state
        # The reconciler's queue: a scan waits until it is quiet and gives way to due work
        # between pages (grants, expiries and a takeover's listings go first). ``caught_up``:
        # set once every request a takeover listed is reconciled; a scan waits for it too.
        self._queue = queue
        self._caught_up = caught_up
        self._eligibilities = eligibilities
        self._leading = leading
        self._interval = interval
        # A role changed: the next scan no sooner than this after the last one began (a
        # cluster whose controllers rewrite Roles all the time is not listed non-stop).
        self._gap = min(_MIN_GAP_SECONDS, interval)
        self._include_system = include_system
        self._accepted = tuple(accepted)
        self._scanner: Scanner | None = None
        self._found: dict[str, Severity] = {}  # binding uid → its worst severity
        self._told: dict[str, str] = {}  # critical binding uid → digest of what was told
        self._baseline = False  # this term's first scan is done: what turns critical is new
        self._roles_changed = asyncio.Event()

    async def close(self) -> None:
        """Close the reader's connections (the task was cancelled before)."""
        await self._reader.close()

    def roles_changed(self) -> None:
        """A Role or ClusterRole was added, changed or deleted: scan again soon."""
        self._roles_changed.set()

    def counts(self) -> dict[str, int]:
        """Privileged standing bindings by severity, as the gauge shows them."""
        counts: dict[str, int] = dict.fromkeys(standing.SEVERITIES, 0)
        for severity in self._found.values():
            counts[severity] += 1
        return counts

    async def run(self) -> None:
        """Scan and follow while leading, until cancelled; a failure scans again after backoff.

        The backoff grows until a scan and its watch have run their course (a watch that keeps
        failing right after each scan must not make the leader list everything every 2 s).
        """
        failures = 0
        while True:
            if not self._leading():
                self._forget()
                await asyncio.sleep(1)
                continue
            try:
                began = time.monotonic()
                versions = await self.scan()
                await self._follow(versions, began)
                failures = 0
            except NotLeading:
                self._forget()
            except Exception as error:
                failures += 1
                metrics.STANDING_SCANS.labels("failed").inc()
                wait = min(60.0, 2.0 ** failures)
                logger.warning("standing-privilege scan or watch failed (%s: %s); scanning "
                               "again in %.0f s", type(error).__name__, error, wait)
                await asyncio.sleep(wait)

    async def scan(self) -> dict[str, str]:
        """One full scan; returns each binding list's resourceVersion (where watches start)."""
        if self._caught_up is not None:
            # The takeover's work done first: its listing of unsettled requests may leave the
            # queue empty for seconds while the API server filters them (takeover 41 s with
            # the scan beside it at 50,000 requests, 26 s without: docs/scale.md run H).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._caught_up.wait(), timeout=120)
        if self._queue is not None:
            # Quiet for 5 s, or 2 minutes at most: then the scan runs anyway, never starved.
            await self._queue.quiet(timeout=120, settle=5.0)
        started = time.monotonic()
        self._roles_changed.clear()  # (a change while reading is seen by the next scan)
        # Of each role only what classifying needs (its rules; a ClusterRole's labels and
        # aggregation too), page by page: not the whole objects of a few thousand roles.
        roles = [_rules_of(item) async for page, _ in self._reader.rbac_pages("roles")
                 for item in page]
        cluster_roles = [_rules_of(item) async for page, _ in
                         self._reader.rbac_pages("clusterroles") for item in page]
        scanner = Scanner(roles, cluster_roles, await self._eligibilities(),
                          self._state.namespaces(), self._include_system, self._accepted)
        del roles, cluster_roles
        found: dict[str, Severity] = {}
        critical: list[tuple[dict[str, Any], list[Finding]]] = []
        versions: dict[str, str] = {}
        budget = [30.0]  # seconds this scan may give way in all
        for kind, plural in _BINDINGS:
            async for page, version in self._reader.rbac_pages(plural, FOREIGN_SELECTOR):
                versions.setdefault(plural, version)
                await self._give_way(budget)
                for binding in page:
                    findings = scanner.binding(kind, binding)
                    severity = standing.worst(findings)
                    if severity is None:
                        continue
                    uid = str(binding["metadata"].get("uid"))
                    found[uid] = severity
                    if severity == "critical" and self._told.get(uid) != _digest(findings):
                        critical.append((_reference(binding), findings))
        if not self._leading():  # (the reads are not fenced: leadership may have passed)
            raise NotLeading("the standing-privilege scan ended after leadership did")
        self._scanner, self._found = scanner, found
        self._told = {uid: told for uid, told in self._told.items() if uid in found}
        self._publish()
        seconds = time.monotonic() - started
        metrics.STANDING_SCANS.labels("ok").inc()
        metrics.STANDING_SCAN_SECONDS.set(seconds)
        counts = self.counts()
        logger.info("standing-privilege scan: %d critical, %d high, %d medium binding(s) in "
                    "%.1f s", counts["critical"], counts["high"], counts["medium"], seconds)
        for reference, findings in critical:
            await self._tell(reference, findings)
        self._baseline = True
        return versions

    async def _give_way(self, budget: list[float]) -> None:
        """Between pages: while work waits in the queue (either lane), let it go first.

        2 s a page at most, and ``budget[0]`` seconds in all for one scan: a list's continue
        token must not outlive etcd's compaction (about 5 minutes) while the scan waits.
        """
        if self._queue is None:
            return
        began = time.monotonic()
        deadline = began + min(2.0, budget[0])
        while not self._queue.idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        budget[0] -= time.monotonic() - began

    async def _follow(self, versions: dict[str, str], began: float) -> None:
        """Watch foreign bindings until the next scan is due (schedule, role change, 410)."""
        deadline = began + self._interval
        watches = [asyncio.create_task(self._watch(kind, plural, versions[plural]),
                                       name=f"standing-{plural}")
                   for kind, plural in _BINDINGS]
        try:
            while time.monotonic() < deadline and self._leading():
                if self._roles_changed.is_set() and time.monotonic() >= began + self._gap:
                    await asyncio.sleep(_SETTLE_SECONDS)
                    return
                done, _ = await asyncio.wait(watches, timeout=1.0)
                for task in done:
                    task.result()  # a failure: raised (run scans again after backoff)
                    return  # 410: the watch's version is gone: scan again
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def _watch(self, kind: str, plural: str, version: str) -> None:
        """Classify each event of one binding watch; returns when its version is gone.

        A watch the API server ends is opened again from the last version seen; one that
        fails is too, after 1, 2, 4 … s, and after five failures in a row the failure is raised
        (a scan follows, after run's backoff).
        """
        failures = 0
        while True:
            opened = time.monotonic()
            try:
                async with contextlib.aclosing(self._reader.watch_rbac(
                        plural, version, FOREIGN_SELECTOR)) as events:
                    async for event in events:
                        binding = event.get("object") or {}
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            binding["kind"] = kind
                            binding["apiVersion"] = "rbac.authorization.k8s.io/v1"
                            await self._binding_event(kind, str(event["type"]), binding)
                        # Past this event only once it was handled (a failure sees it again).
                        version = str((binding.get("metadata") or {}).get("resourceVersion")
                                      or version)
                        failures = 0
            except Gone:
                return
            except (TimeoutError, ApiError, OSError, aiohttp.ClientError) as error:
                failures += 1
                if failures >= 5:
                    raise
                logger.info("the standing-privilege watch of %s failed (%s: %s); watching "
                            "again", plural, type(error).__name__, error)
                await asyncio.sleep(2.0 ** (failures - 1))
                continue
            if time.monotonic() - opened < 5:
                await asyncio.sleep(1)  # ended at once: not a tight loop of reconnects

    async def _binding_event(self, kind: str, change: str, binding: dict[str, Any]) -> None:
        if not self._leading():
            # Not dropped: in doubt (a late renewal) or lost, a scan follows once leading.
            raise NotLeading("a standing-privilege watch event while not leading")
        uid = str(binding["metadata"].get("uid"))
        if change != "DELETED" and self._scanner is not None:
            await self._learn_role(binding)
        findings = [] if change == "DELETED" or self._scanner is None else \
            self._scanner.binding(kind, binding)
        severity = standing.worst(findings)
        if severity is None:
            self._found.pop(uid, None)
        else:
            self._found[uid] = severity
        if severity != "critical":
            self._told.pop(uid, None)  # (critical again later: told again)
        self._publish()
        if severity == "critical" and self._told.get(uid) != _digest(findings):
            await self._tell(_reference(binding), findings)

    async def _learn_role(self, binding: dict[str, Any]) -> None:
        """The binding's role, if made after the last scan (create a Role, then bind it).

        Read once, so the binding is counted now rather than at the scan that role's creation
        brings forward; a role that does not exist (yet) grants nothing.
        """
        assert self._scanner is not None
        ref = binding.get("roleRef") or {}
        kind, name = str(ref.get("kind")), str(ref.get("name"))
        namespace = binding["metadata"].get("namespace") if kind == "Role" else None
        if kind not in ("Role", "ClusterRole") or self._scanner.knows(kind, name, namespace):
            return
        rules = await self._reader.role_rules(kind, name, namespace)
        # A role that does not exist grants nothing, and is not read again for every event of
        # bindings naming it: its creation brings a scan.
        self._scanner.learn(kind, name, namespace, rules or [])

    async def _tell(self, binding: dict[str, Any], findings: list[Finding]) -> None:
        """An audit line and a Warning Event on the binding, once per critical subject set."""
        if not self._leading():
            raise NotLeading("not telling of standing access: not leading")
        uid, digest = str(binding["metadata"]["uid"]), _digest(findings)
        critical = [f for f in findings if f.severity == "critical"]
        first = critical[0]
        holders = sorted({f.subject for f in critical})
        where = f"in namespace {first.scope}" if first.scope else "cluster-wide"
        # Only who holds what (the Event's words must be the same after a restart for the
        # repeat to be recognised): what covers it, which can change, goes in the line.
        message = (
            f"critical standing access outside kubepim: {', '.join(holders)} "
            f"{'hold' if len(holders) > 1 else 'holds'} {first.role} {where} through "
            f"{first.binding} ({', '.join(first.rules)}); kubectl pim standing --subject "
            f"{holders[0]} -o wide")
        if self._baseline:  # turned critical while this leader watched: new (the alert)
            metrics.STANDING_CRITICAL_APPEARED.inc()
        # The line first, once per process (a restart repeats it under the same id: consumers
        # keep the first); then the Event, which a 409 with our exact words stands in for.
        # Its content is the same whenever it is repeated (an id is one fact): the time is the
        # binding's creation, what it says is what the digest covers; what covers it (which
        # changes) is for the inventory (kubectl pim standing -o wide), not the line.
        audit.logger.info(json.dumps({
            "id": f"{uid}/standing/{digest[:12]}", "request": None,
            "time": binding["metadata"].get("creationTimestamp"),
            "action": "StandingPrivilege", "binding": first.binding, "role": first.role,
            "scope": first.scope or "cluster", "subjects": holders, "rules": list(first.rules),
            "severity": "critical", "reason": message}, sort_keys=True))
        try:
            await audit.post_event(self._writer, binding, "Warning", "StandingPrivilege",
                                   message, utcnow(), int(digest[:5], 16) % 1_000_000,
                                   f"{first.binding}'s StandingPrivilege")
        except NotLeading:
            raise
        except Exception as error:  # the line is the record; an Event is not retried
            logger.warning("could not post the StandingPrivilege Event of %s (%s: %s)",
                           first.binding, type(error).__name__, error)
        self._told[uid] = digest  # (after the post: a cancelled one is told again)

    def _publish(self) -> None:
        for severity, count in self.counts().items():
            metrics.STANDING_BINDINGS.labels(severity).set(count)

    def _forget(self) -> None:
        """Not leading: no count (the leader's is the one), nothing remembered."""
        self._scanner, self._found, self._told, self._baseline = None, {}, {}, False
        metrics.STANDING_BINDINGS.clear()


def _rules_of(role: dict[str, Any]) -> dict[str, Any]:
    """What classifying a role needs: its name, namespace, labels, rules and aggregation."""
    metadata = role.get("metadata") or {}
    return {"metadata": {key: metadata[key] for key in ("name", "namespace", "labels")
                         if key in metadata},
            "rules": role.get("rules") or [], "aggregationRule": role.get("aggregationRule")}


def _digest(findings: list[Finding]) -> str:
    """What a binding's critical findings say: who holds what (a change is told again)."""
    critical = sorted((f.subject, f.role, f.scope, f.rules) for f in findings
                      if f.severity == "critical")
    return hashlib.sha256(json.dumps(critical).encode()).hexdigest()


def _reference(binding: dict[str, Any]) -> dict[str, Any]:
    """Just what an Event needs of a binding (a scan keeps no whole binding)."""
    metadata = binding.get("metadata") or {}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding.get("kind"),
            "metadata": {key: metadata[key] for key in ("name", "namespace", "uid",
                                                        "creationTimestamp") if key in metadata}}
