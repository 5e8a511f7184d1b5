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
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from kubepim import audit, metrics
from kubepim.domain import standing
from kubepim.domain.standing import Finding, Scanner, Severity
from kubepim.engine.state import State
from kubepim.k8s.client import FOREIGN_SELECTOR, Gone, Kube, NotLeading

from .reconcile import utcnow

logger = logging.getLogger(__name__)

_BINDINGS = (("ClusterRoleBinding", "clusterrolebindings"), ("RoleBinding", "rolebindings"))
# A burst of role changes (a chart installed, an aggregation updated) makes one scan, not many.
_SETTLE_SECONDS = 2.0


class StandingWatch:
    """The leader's inventory of privileged standing bindings, kept current.

    ``reader``: a client on its own connections (a long watch must not hold one of the
    reconciler's); ``writer``: the reconciler's fenced client, for Events. ``state``: the
    reconciler's state (eligibilities and namespace labels, to say what covers a finding).
    """

    def __init__(self, reader: Kube, writer: Kube, state: State, leading: Callable[[], bool],
                 interval: float, include_system: bool = False) -> None:
        self._reader, self._writer, self._state = reader, writer, state
        self._leading = leading
        self._interval = interval
        self._include_system = include_system
        self._scanner: Scanner | None = None
        self._found: dict[str, Severity] = {}  # binding uid → its worst severity
        self._told: dict[str, str] = {}  # critical binding uid → digest of what was told
        self._roles_changed = asyncio.Event()
        self.scans = 0

    def roles_changed(self) -> None:
        """A Role or ClusterRole was added, changed or deleted: scan again soon."""
        self._roles_changed.set()

    async def close(self) -> None:
        """Close the reader's connections (the task was cancelled before)."""
        await self._reader.close()

    def counts(self) -> dict[str, int]:
        """Privileged standing bindings by severity, as the gauge shows them."""
        counts: dict[str, int] = dict.fromkeys(standing.SEVERITIES, 0)
        for severity in self._found.values():
            counts[severity] += 1
        return counts

    async def run(self) -> None:
        """Scan and follow while leading, until cancelled; a failure scans again after backoff."""
        failures = 0
        while True:
            if not self._leading():
                self._forget()
                await asyncio.sleep(1)
                continue
            try:
                versions = await self.scan()
                failures = 0
                await self._follow(versions)
            except NotLeading:
                self._forget()
            except Exception as error:
                failures += 1
                metrics.STANDING_SCANS.labels("failed").inc()
                wait = min(60.0, 2.0 ** failures)
                logger.warning("standing-privilege scan failed (%s: %s); scanning again in "
                               "%.0f s", type(error).__name__, error, wait)
                await asyncio.sleep(wait)

    async def scan(self) -> dict[str, str]:
        """One full scan; returns each binding list's resourceVersion (where watches start)."""
        started = time.monotonic()
        self._roles_changed.clear()  # (a change while reading is seen by the next scan)
        roles = [item async for page, _ in self._reader.rbac_pages("roles") for item in page]
        cluster_roles = [item async for page, _ in self._reader.rbac_pages("clusterroles")
                         for item in page]
        scanner = self._new_scanner(roles, cluster_roles)
        del roles, cluster_roles  # the scanner keeps the rules only
        found: dict[str, Severity] = {}
        critical: list[tuple[dict[str, Any], list[Finding]]] = []
        versions: dict[str, str] = {}
        for kind, plural in _BINDINGS:
            async for page, version in self._reader.rbac_pages(plural, FOREIGN_SELECTOR):
                versions.setdefault(plural, version)
                for binding in page:
                    findings = scanner.binding(kind, binding)
                    severity = standing.worst(findings)
                    if severity is None:
                        continue
                    uid = str(binding["metadata"].get("uid"))
                    found[uid] = severity
                    if severity == "critical" and self._told.get(uid) != _digest(findings):
                        critical.append((_reference(binding), findings))
        self._scanner, self._found = scanner, found
        self._told = {uid: told for uid, told in self._told.items() if uid in found}
        self._publish()
        seconds = time.monotonic() - started
        self.scans += 1
        metrics.STANDING_SCANS.labels("ok").inc()
        metrics.STANDING_SCAN_SECONDS.set(seconds)
        counts = self.counts()
        logger.info("standing-privilege scan: %d critical, %d high, %d medium binding(s) in "
                    "%.1f s", counts["critical"], counts["high"], counts["medium"], seconds)
        for reference, findings in critical:
            await self._tell(reference, findings)
        return versions

    def _new_scanner(self, roles: list[dict[str, Any]],
                     cluster_roles: list[dict[str, Any]]) -> Scanner:
        return Scanner(roles, cluster_roles, self._state.eligibilities or {},
                       self._state.namespaces(), self._include_system)

    async def _follow(self, versions: dict[str, str]) -> None:
        """Watch foreign bindings until the next scan is due (schedule, role change, 410)."""
        deadline = time.monotonic() + self._interval
        watches = [asyncio.create_task(self._watch(kind, plural, versions[plural]),
                                       name=f"standing-{plural}")
                   for kind, plural in _BINDINGS]
        try:
            while time.monotonic() < deadline and self._leading():
                if self._roles_changed.is_set():
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
        """Classify each event of one binding watch; returns when its version is gone."""
        while True:
            try:
                async for event in self._reader.watch_rbac(plural, version, FOREIGN_SELECTOR):
                    binding = event.get("object") or {}
                    version = str((binding.get("metadata") or {}).get("resourceVersion")
                                  or version)
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        binding["kind"] = kind
                        binding["apiVersion"] = "rbac.authorization.k8s.io/v1"
                        await self._binding_event(kind, str(event["type"]), binding)
            except Gone:
                return
            # The API server ended the watch (timeoutSeconds): on from the last version seen.

    async def _binding_event(self, kind: str, change: str, binding: dict[str, Any]) -> None:
        uid = str(binding["metadata"].get("uid"))
        findings = [] if change == "DELETED" or self._scanner is None else \
            self._scanner.binding(kind, binding)
        severity = standing.worst(findings)
        if severity is None:
            self._found.pop(uid, None)
            self._told.pop(uid, None)
        else:
            self._found[uid] = severity
        self._publish()
        if severity == "critical" and self._told.get(uid) != _digest(findings):
            await self._tell(_reference(binding), findings)

    async def _tell(self, binding: dict[str, Any], findings: list[Finding]) -> None:
        """A Warning Event on the binding and an audit line, once per critical subject set."""
        uid, digest = str(binding["metadata"]["uid"]), _digest(findings)
        critical = [f for f in findings if f.severity == "critical"]
        first = critical[0]
        holders = sorted({f.subject for f in critical})
        subjects = ", ".join(holders) + (" hold" if len(holders) > 1 else " holds")
        covered = sorted({name for f in critical for name in f.eligible})
        where = f"in namespace {first.scope}" if first.scope else "cluster-wide"
        message = (
            f"critical standing access outside kubepim: {subjects} {first.role} {where} "
            f"through {first.binding} ({', '.join(first.rules)}). "
            + (f"RoleEligibility {', '.join(covered)} already covers it: the binding can be "
               "removed" if covered else
               f"To make it eligible instead: kubectl pim standing --subject "
               f"{critical[0].subject} -o eligibility"))
        # The line first, once per process (a restart repeats it under the same id: consumers
        # keep the first); then the Event, which a 409 with our exact words stands in for.
        audit.logger.info(json.dumps({
            "id": f"{uid}/standing/{digest[:12]}", "time": utcnow().isoformat(),
            "action": "StandingPrivilege", "binding": first.binding, "role": first.role,
            "scope": first.scope or "cluster", "subjects": holders, "rules": list(first.rules),
            "severity": "critical", "coveredBy": covered, "reason": message}, sort_keys=True))
        self._told[uid] = digest
        try:
            await audit.post_event(self._writer, binding, "Warning", "StandingPrivilege",
                                   message, utcnow(), int(digest[:5], 16) % 1_000_000,
                                   f"{first.binding}'s StandingPrivilege")
        except NotLeading:
            raise
        except Exception as error:  # the line is the record; an Event is not retried
            logger.warning("could not post the StandingPrivilege Event of %s (%s: %s)",
                           first.binding, type(error).__name__, error)

    def _publish(self) -> None:
        for severity, count in self.counts().items():
            metrics.STANDING_BINDINGS.labels(severity).set(count)

    def _forget(self) -> None:
        """Not leading: no count (the leader's is the one), nothing remembered."""
        if self._scanner is not None or self._found:
            self._scanner, self._found, self._told = None, {}, {}
        metrics.STANDING_BINDINGS.clear()


def _digest(findings: list[Finding]) -> str:
    """What a binding's critical findings say: who holds what (a change is told again)."""
    critical = sorted((f.subject, f.role, f.scope) for f in findings if f.severity == "critical")
    return hashlib.sha256(json.dumps(critical).encode()).hexdigest()


def _reference(binding: dict[str, Any]) -> dict[str, Any]:
    """Just what an Event needs of a binding (a scan keeps no whole binding)."""
    metadata = binding.get("metadata") or {}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding.get("kind"),
            "metadata": {key: metadata[key] for key in ("name", "namespace", "uid")
                         if key in metadata}}
