"""The engine's memory: everything the leader remembers between reconciles, in one owner.

Every cache and record the reconcile path relies on lives here, and changes only through a
method of :class:`State`: what the watches report (namespaces, roles, eligibilities, bindings),
what this replica decided or wrote (resourceVersions, binding writes), and where each open
request stands (live grants and their expiry, the governing eligibility, the namespace).
``forget`` drops a request whole once it is gone; ``reset`` drops every decision made as leader
when the lease is lost; caches fed by a watch compare resourceVersions, so neither a late event
nor a relist can overwrite a newer event.

Memory stays with live work: a settled request (final, nothing left to do) keeps only its
version record, and only until the watch reports it leaving the selection of unsettled requests
(or the next resync); a per-request lock exists only while someone holds or awaits it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
from collections.abc import AsyncIterator, Iterable
from typing import Any

from pydantic import ValidationError

from kubepim.api.common import LabelSelector
from kubepim.api.eligibility import RoleEligibilitySpec, Suspension
from kubepim.api.request import Phase
from kubepim.domain.admission import privileged
from kubepim.domain.recertification import effective, suspensions_in
from kubepim.domain.review import RoleKey, selector_matches


def binding_key(kind: str, namespace: str | None, name: str) -> str:
    """How the binding index and own-write records name a binding."""
    return f"{kind}/{namespace or ''}/{name}"


class Locks:
    """One asyncio lock per request, existing only while held or awaited.

    A count of holders and waiters is kept beside each lock; the last one out removes it, so
    finished requests hold no lock, and two holders of one name never get different locks.
    """

    def __init__(self) -> None:
        self._held: dict[str, list[Any]] = {}  # name -> [lock, holders and waiters]

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Hold the request's lock for the ``async with`` block."""
        entry = self._held.get(name)
        if entry is None:
            entry = self._held[name] = [asyncio.Lock(), 0]
        entry[1] += 1  # counted before any await: a waiter keeps the lock alive
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._held.get(name) is entry:
                del self._held[name]

    def __len__(self) -> int:
        return len(self._held)


class State:
    """Live grants, versions seen or written, indexes and watch caches (leader's memory)."""

    def __init__(self) -> None:
        self.locks = Locks()
        # The newest resourceVersion of each open request decided on or written: a watch event
        # bringing no newer one (our own status write coming back, say) needs nothing.
        self._versions: dict[str, str] = {}
        # resourceVersion of each binding as this replica last wrote it, and the request uid it
        # was written for: the watch event of our own write needs nothing, and the entry goes
        # as soon as the watch reports another version.
        self._own_writes: dict[str, tuple[str, str]] = {}
        # Bindings this replica deleted, until the watch reports them gone (monotonic time):
        # their DELETED event needs no reconcile of the request (nothing to restore).
        self._own_deletes: dict[str, float] = {}
        # Bindings that look like ours and exist, as the binding watch and our writes saw them,
        # with the newest resourceVersion seen (0: not known).
        self._bindings: dict[str, int] = {}
        # Active grants and their expiry, as last reconciled: the gauges read it.
        self._active: dict[str, datetime.datetime] = {}
        # Open requests by governing eligibility and by namespace (each re-decides only these).
        self._governed: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
        self._in_namespace: collections.defaultdict[str, set[str]] = \
            collections.defaultdict(set)
        self._placed: dict[str, tuple[str | None, str | None]] = {}
        # Requests this replica settled, until the watch reports them leaving its selection (a
        # DELETED event that is not a deletion): when (monotonic) each was settled.
        self._settled: dict[str, tuple[str, float]] = {}  # name -> (uid, when)
        self._uids: dict[str, str] = {}  # name -> uid of the request held under it
        # Final requests whose settle write failed: every event of them is read and decided.
        self._finishing: set[str] = set()
        # Final requests whose final transition's audit lines this replica logged (by name:
        # uid), so settling them later (a notification owed meanwhile) logs nothing twice.
        self._final_logged: dict[str, str] = {}
        # Namespaces as the watch last saw them: labels, uid and resourceVersion.
        self._namespaces: dict[str, tuple[dict[str, str], str, int]] = {}
        self._namespace_versions: dict[str, int] = {}  # deletions remembered too
        # Why each deny-listed Role and ClusterRole is, as the role watch last saw its rules.
        self.privileged: dict[RoleKey, str] = {}
        # Valid eligibilities (None until first listed) and the version each was last seen at.
        self._eligibilities: dict[str, RoleEligibilitySpec] | None = None
        # Their labels, for NotificationRoutes that select eligibilities by label.
        self._eligibility_labels: dict[str, dict[str, str]] = {}
        # Per eligibility, the subjects access reviews suspended (its status), for messages.
        self._suspensions: dict[str, list[Suspension]] = {}
        self._eligibility_versions: dict[str, tuple[int, bool]] = {}
        self._listed_at = 0
        # Requests (by uid) whose status write got no answer: (first history index it carried,
        # the resourceVersion it was based on).
        self._unconfirmed: dict[str, tuple[int, str]] = {}

    # Requests: versions decided, placement, forgetting.

    def newer_than_decided(self, name: str, version: str | None) -> bool | None:
        """Whether ``version`` is newer than every one decided on or written for ``name``.

        Compared as the integers the API server issues; None when unequal versions cannot be
        ordered (not integers).
        """
        if name in self._finishing:
            return None  # final, its settle write still to land: read it and settle it
        seen = self._versions.get(name)
        if seen is None or version is None:
            return True
        if seen.isdigit() and version.isdigit():
            return int(version) > int(seen)
        return False if version == seen else None

    def decided_version(self, name: str) -> str | None:
        """The newest version of ``name`` decided on or written, if any is held."""
        return self._versions.get(name)

    def is_decided(self, name: str, version: str | None) -> bool:
        """Whether ``version`` is exactly the newest one decided on or written for ``name``."""
        return version is not None and self._versions.get(name) == version

    def decided(self, name: str, version: str | None) -> None:
        """``version`` of ``name`` was decided on or written (kept only if newer)."""
        if version is None:
            return
        seen = self._versions.get(name)
        if seen is None or not (seen.isdigit() and version.isdigit()) or int(version) > int(seen):
            self._versions[name] = version

    def place(self, name: str, phase: Phase | None, governing: str | None,
              namespace: str | None, expires_at: datetime.datetime | None,
              settled: bool = False, at: float = 0.0, uid: str = "",
              finishing: bool = False) -> None:
        """Where a request stands after its reconcile.

        A final request is held (its version record only) until settled; a settled one is kept
        only as settled, until :meth:`left_selection` or :meth:`drop_settled_before`.
        ``finishing``: final, its settle write failed: every event of it is read and decided.
        """
        self._unplace(name)
        if uid:
            self._uids[name] = uid
        if settled:
            self._settled[name] = (uid, at)
            return
        self._settled.pop(name, None)  # a request made again under the name of a settled one
        if phase not in (Phase.PENDING, Phase.ACTIVE):
            self._placed[name] = (None, None)  # final, not yet settled: keep its version
            if finishing:
                self._finishing.add(name)
            return
        if governing:
            self._governed[governing].add(name)
        if namespace:
            self._in_namespace[namespace].add(name)
        self._placed[name] = (governing, namespace)
        if phase == Phase.ACTIVE and expires_at is not None:
            self._active[name] = expires_at

    def _unplace(self, name: str) -> None:
        self._active.pop(name, None)
        self._finishing.discard(name)
        governing, namespace = self._placed.pop(name, (None, None))
        for index, key in ((self._governed, governing), (self._in_namespace, namespace)):
            if key is not None and key in index:
                index[key].discard(name)
                if not index[key]:
                    del index[key]

    def holds_another(self, name: str, uid: str) -> bool:
        """Whether ``name`` is held as a request other than ``uid`` (made again since)."""
        held = self._uids.get(name)
        return bool(uid) and held is not None and held != uid

    def forget(self, name: str) -> None:
        """Everything remembered of a request that is gone (gauges included)."""
        self._uids.pop(name, None)
        self._unplace(name)
        self._versions.pop(name, None)
        self._settled.pop(name, None)
        self._final_logged.pop(name, None)

    def logged_final_lines(self, name: str, uid: str) -> None:
        """Record that this replica logged the lines of ``name``'s final transition."""
        self._final_logged[name] = uid

    def final_lines_logged(self, name: str, uid: str) -> bool:
        """Whether this replica logged the lines of this request's final transition."""
        return self._final_logged.get(name) == uid != ""

    def left_selection(self, name: str, uid: str) -> bool:
        """Forget ``name`` after a DELETED event; True if this replica had settled it.

        Then the event means it left the watch's selection, not that it was deleted.
        """
        if self.holds_another(name, uid):
            return False  # a request made again under its name is held: not this one's to drop
        settled = self._settled.get(name, ("", 0.0))[0] == uid != ""
        self.forget(name)
        return settled

    def drop_settled_before(self, moment: float) -> int:
        """Forget requests settled before ``moment``; returns how many.

        (Their leave event was missed: a watch that relisted.)
        """
        old = [name for name, (_, at) in self._settled.items() if at < moment]
        for name in old:
            self.forget(name)
        return len(old)

    def governed_by(self, eligibility: str) -> list[str]:
        """Open requests governed by ``eligibility``, sorted."""
        return sorted(self._governed.get(eligibility, ()))

    def in_namespace(self, namespace: str) -> list[str]:
        """Open requests in ``namespace``, sorted."""
        return sorted(self._in_namespace.get(namespace, ()))

    def active_grants(self) -> int:
        """How many grants are Active (the kubepim_active_grants gauge)."""
        return len(self._active)

    def overdue(self, now: datetime.datetime) -> int:
        """Active grants past their expiry (the KubepimGrantOverdue page).

        Called from the metrics server's thread while the event loop changes ``_active``: it
        counts over a copy (``list()`` of a dict's values is one step under the GIL); iterating
        the dict itself raised "dictionary changed size during iteration", a 500 on /metrics.
        """
        return sum(1 for expires in list(self._active.values()) if expires <= now)

    def is_held(self, name: str) -> bool:
        """Whether ``name`` is held: not settled, or settled and not yet seen leaving."""
        return name in self._placed or name in self._settled

    def is_active(self, name: str) -> bool:
        """Whether ``name`` is held as an Active grant."""
        return name in self._active

    def sizes(self) -> dict[str, int]:
        """Entries held per record (the memory benchmark and tests read it)."""
        return {"versions": len(self._versions), "own_writes": len(self._own_writes),
                "own_deletes": len(self._own_deletes),
                "bindings": len(self._bindings), "active": len(self._active),
                "placed": len(self._placed), "settled": len(self._settled),
                "locks": len(self.locks),
                "namespaces": len(self._namespaces),
                "eligibilities": len(self._eligibilities or {}),
                "unconfirmed": len(self._unconfirmed)}

    # Status writes that got no answer.

    def unconfirmed_write(self, uid: str, history_index: int, based_on: str) -> None:
        """A status write got no answer: its lines wait until a newer version shows them."""
        self._unconfirmed.setdefault(uid, (history_index, based_on))

    def drop_unconfirmed(self, uid: str) -> None:
        """The request with ``uid`` is gone: no line waits for its write any more."""
        self._unconfirmed.pop(uid, None)

    def confirm(self, uid: str, version: str | None) -> int | None:
        """The history index an unanswered write began at, or None if nothing waits.

        Given once a version other than the one the write was based on is seen: it landed, or
        it never will.
        """
        waiting = self._unconfirmed.get(uid)
        if waiting is None or version == waiting[1]:
            return None
        del self._unconfirmed[uid]
        return waiting[0]

    # Bindings: which exist, which we wrote.

    def binding_exists(self, key: str) -> bool:
        """Whether the binding watch (or our own write) says ``key`` exists."""
        return key in self._bindings

    def wrote_binding(self, key: str, version: str, request_uid: str) -> None:
        """Record our create of binding ``key`` (at ``version``, for ``request_uid``)."""
        self._own_writes[key] = (version, request_uid)
        self._bindings[key] = max(self._bindings.get(key, 0), _int(version))
        self._own_deletes.pop(key, None)  # an older delete's record: never this one's

    def verified_binding(self, key: str, version: str, request_uid: str) -> bool:
        """Record binding ``key`` read at ``version`` and found as approved, like one we wrote.

        Not if the watch has seen a newer version meanwhile (changed while we read): that one
        is judged on its own. Whether it was recorded.
        """
        if _int(version) < self._bindings.get(key, 0):
            return False
        self.wrote_binding(key, version, request_uid)
        return True

    def own_write_current(self, key: str) -> bool:
        """Whether we wrote (or verified) ``key`` and the watch has seen no newer version."""
        own = self.own_write(key)
        return own is not None and _int(own) >= self._bindings.get(key, 0)

    def own_write(self, key: str, request_uid: str | None = None) -> str | None:
        """The version of ``key`` this replica wrote (for ``request_uid``, if given)."""
        written = self._own_writes.get(key)
        if written is None or (request_uid is not None and written[1] != request_uid):
            return None
        return written[0]

    def is_own_write(self, key: str, version: str | None) -> bool:
        """Whether the binding at ``version`` is the one this replica last wrote."""
        return version is not None and self.own_write(key) == version

    def drop_write(self, key: str) -> None:
        """Our record of writing ``key`` no longer holds (deleted, or changed by someone)."""
        self._own_writes.pop(key, None)

    def deleted_binding(self, key: str, at: float) -> None:
        """Record our delete of binding ``key`` (its DELETED event is then ours)."""
        self._own_deletes[key] = at
        self.binding_seen(key, present=False)

    def deleted_by_us(self, key: str) -> bool:
        """Whether our delete of ``key`` is the last the watch (or our write) knows of."""
        return key in self._own_deletes and key not in self._bindings

    def was_own_delete(self, key: str) -> bool:
        """Whether a DELETED event of ``key`` reports our own delete (the record goes)."""
        return self._own_deletes.pop(key, None) is not None

    def drop_own_deletes_before(self, moment: float) -> None:
        """Forget deletes whose DELETED event never came (a watch that listed again)."""
        for key in [k for k, at in self._own_deletes.items() if at < moment]:
            del self._own_deletes[key]

    def binding_seen(self, key: str, present: bool, version: str | None = None) -> None:
        """The binding watch saw ``key`` exist (at ``version``) or go."""
        if present:
            self._bindings[key] = max(self._bindings.get(key, 0), _int(version))
            # It exists again: a record of our earlier delete must not swallow the DELETED of
            # this binding (someone else's delete is restored, not ignored).
            self._own_deletes.pop(key, None)
        else:
            self._bindings.pop(key, None)
            self._own_writes.pop(key, None)

    # Namespaces.

    def namespace(self, name: str) -> tuple[str, dict[str, str]] | None:
        """(uid, labels) of a namespace as the watch holds it; None if it holds none."""
        held = self._namespaces.get(name)
        return (held[1], held[0]) if held is not None else None

    def namespaces(self) -> dict[str, dict[str, str]]:
        """Labels of every namespace the watch holds."""
        return {name: held[0] for name, held in self._namespaces.items()}

    def observe_namespace(self, name: str, labels: dict[str, str] | None, uid: str = "",
                          version: str | None = None) -> list[str]:
        """Apply one namespace watch event (``labels`` None: deleted or being deleted).

        Returns the open requests there if what they are decided on changed (labels a selector
        may match, the namespace going or made again); a late, older event changes nothing.
        """
        seen = _int(version)
        if seen and self._namespace_versions.get(name, 0) > seen:
            return []
        if seen:
            self._namespace_versions[name] = seen
        before = self._namespaces.get(name)
        if labels is None:
            self._namespaces.pop(name, None)
        else:
            self._namespaces[name] = (labels, uid, seen)
        after = self._namespaces.get(name)
        if (before and before[:2]) != (after and after[:2]):
            return self.in_namespace(name)
        return []

    def apply_namespace_list(self, items: Iterable[tuple[str, dict[str, str] | None, str,
                                                       str | None]],
                             listed_at: int) -> list[str]:
        """Apply a full list of namespaces served at ``listed_at``.

        ``items``: (name, labels or None if going, uid, version). A namespace held but not
        listed, and not seen after the list was served, is gone (a watch that relisted delivers
        no DELETED). Returns the requests to decide again.
        """
        listed = set()
        changed: list[str] = []
        for name, labels, uid, version in items:
            listed.add(name)
            changed += self.observe_namespace(name, labels, uid, version)
        for name in [n for n in self._namespaces if n not in listed]:
            if self._namespace_versions.get(name, 0) <= listed_at:
                changed += self.observe_namespace(name, None)
        for name in [n for n in self._namespace_versions if n not in listed
                     and n not in self._namespaces and self._namespace_versions[n] <= listed_at]:
            del self._namespace_versions[name]  # gone before the list: nothing to compare
        return sorted(set(changed))

    # Roles on the deny-list.

    def observe_role(self, kind: str, namespace: str | None, name: str,
                     rules: list[dict[str, Any]] | None) -> bool:
        """Apply one role watch event (``rules`` None: deleted).

        True if its deny-listing changed: the requests that could be granted it must be decided
        again.
        """
        key: RoleKey = (kind, namespace or "", name)
        reason = privileged(kind, name, rules, namespace) if rules is not None else None
        if self.privileged.get(key) == reason:
            return False
        if reason is None:
            del self.privileged[key]
        else:
            self.privileged[key] = reason
        return True

    def privileged_where_selected(self, role: str, selector: LabelSelector) -> list[str]:
        """Why a Role named ``role`` is deny-listed in each namespace ``selector`` matches now."""
        return [reason for (kind, namespace, name), reason in sorted(self.privileged.items())
                if kind == "Role" and name == role and namespace in self._namespaces
                and selector_matches(selector, self._namespaces[namespace][0])]

    # Eligibilities.

    @property
    def eligibilities(self) -> dict[str, RoleEligibilitySpec] | None:
        """Every valid eligibility by name (None until first listed); a stable snapshot."""
        return self._eligibilities

    def apply_eligibility_list(self, items: list[dict[str, Any]], listed_at: int) -> list[str]:
        """Rebuild the cache from a list served at ``listed_at``, never undoing a newer event.

        An eligibility the watch saw at a version newer than the list's (created, changed or
        deleted after the list was served) keeps what the watch said; an older list than the
        one applied is ignored. Returns the eligibilities the list changed (an event the watch
        missed): the requests they govern are decided again.
        """
        if listed_at and listed_at < self._listed_at:
            return []
        self._listed_at = listed_at
        fresh: dict[str, RoleEligibilitySpec] = {}
        versions: dict[str, tuple[int, bool]] = {}
        for item in items:
            name = item["metadata"]["name"]
            versions[name] = (_int(item["metadata"].get("resourceVersion")), True)
            if versions[name][0] >= self._eligibility_versions.get(name, (0, False))[0]:
                self._eligibility_labels[name] = dict(item["metadata"].get("labels") or {})
            parsed = _eligibility(item.get("spec"), item.get("status"))
            self._suspensions[name] = suspensions_in(item.get("status"))
            if parsed is not None:
                fresh[name] = parsed
        first = self._eligibilities is None
        current = self._eligibilities or {}
        for name, (seen, present) in self._eligibility_versions.items():
            if seen > max(versions.get(name, (0, False))[0], listed_at):
                versions[name] = (seen, present)
                fresh.pop(name, None)
                if present and name in current:
                    fresh[name] = current[name]
        self._eligibility_versions = versions
        self._eligibilities = fresh
        for name in [name for name in self._eligibility_labels
                     if name not in versions and name not in self._governed]:
            del self._eligibility_labels[name]  # gone, and nothing it governed is held
        if first:
            return []  # the first list: nothing was decided on the cache before it
        return sorted(name for name in set(current) | set(fresh)
                      if current.get(name) != fresh.get(name))

    def suspensions(self) -> dict[str, list[Suspension]]:
        """Per eligibility, the subjects access reviews suspended from it (none: left out)."""
        return {name: found for name, found in self._suspensions.items() if found}

    def eligibility_labels(self, name: str | None) -> dict[str, str] | None:
        """The labels of an eligibility as last seen, or None when it is not known."""
        return self._eligibility_labels.get(name) if name else None

    def observe_eligibility(self, name: str, spec: dict[str, Any] | None,
                            version: str | None = None,
                            labels: dict[str, str] | None = None,
                            status: dict[str, Any] | None = None) -> bool:
        """Apply one eligibility watch event (``spec`` None: deleted); older ones are ignored.

        ``status``: its suspended subjects (access reviews) are left out of the cached spec.
        True when what decisions read changed (or is not known yet): the spec as in force,
        its existence, its labels (notification routes select by them). Not for a status-only
        change (its Ready or Notified condition): the requests it governs need no reconcile.
        """
        seen = _int(version)
        if seen and self._eligibility_versions.get(name, (0, False))[0] > seen:
            return False
        self._eligibility_versions[name] = (seen, spec is not None)
        relabelled = self._eligibility_labels.get(name) != dict(labels or {})
        # Kept on deletion too (the event carries the last labels): the Revoked notifications
        # of the requests it governed are routed by them. Dropped by the next list once none
        # of its Pending or Active requests is held (a final one awaiting its break-glass
        # review is not counted: its later notifications route without the labels).
        self._eligibility_labels[name] = dict(labels or {})
        if self._eligibilities is None:
            return True  # the first use lists everything anyway
        updated = dict(self._eligibilities)
        before = updated.get(name)
        parsed = _eligibility(spec, status) if spec is not None else None
        self._suspensions[name] = suspensions_in(status) if spec is not None else []
        if parsed is None:
            updated.pop(name, None)
        else:
            updated[name] = parsed
        self._eligibilities = updated  # replaced, not mutated: readers keep a stable view
        return parsed != before or relabelled

    # Leadership.

    def reset(self) -> None:
        """The lease was lost: drop every decision made as leader.

        Watch caches (namespaces, roles, eligibilities, which bindings exist) stay: they are
        facts the watches keep current on a standby too. The next leader's takeover replays
        the lines of unanswered writes.
        """
        self._versions.clear()
        self._own_writes.clear()
        self._own_deletes.clear()
        self._active.clear()
        self._governed.clear()
        self._in_namespace.clear()
        self._placed.clear()
        self._settled.clear()
        self._uids.clear()
        self._finishing.clear()
        self._final_logged.clear()
        self._unconfirmed.clear()


def _int(version: Any) -> int:
    return int(version) if version is not None and str(version).isdigit() else 0


def _eligibility(spec: Any, status: Any = None) -> RoleEligibilitySpec | None:
    """The eligibility as admission and the reconciler apply it.

    Its spec, less the subjects access reviews suspended (its status says which;
    docs/reviews.md).
    """
    try:
        parsed = RoleEligibilitySpec.model_validate(spec or {})
    except ValidationError:
        return None
    # By identity, not spelling: the same user listed again another way stays suspended.
    return effective(parsed, suspensions_in(status))
