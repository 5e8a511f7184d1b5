"""kubectl pim: request, approve and follow access from the terminal, as yourself.

Installed as the executable ``kubectl-pim``, so kubectl finds it on PATH. It acts as the user of
the kubeconfig's current context (kubectl's --kubeconfig, --context, -n, --as, --as-group) and
makes only the API calls that user could make with kubectl; identity stays the API server's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys

from kubepim.api import duration

from .api import GROUP_PATH, Api, ApiError, Unreachable
from .kubeconfig import ConfigError, load

# Not typing or collections.abc at run time (start-up time); mypy reads these.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_DENIED, EXIT_TIMED_OUT, EXIT_REJECTED, EXIT_ENDED, EXIT_WAIT_TIMEOUT = 3, 4, 5, 6, 7
EXIT_FOUND = 8
EXIT_CODES = f"""exit codes:
  {EXIT_OK}  done (request --wait: the grant is Active)
  {EXIT_ERROR}  refused or failed: the message says why (admission's refusal as it is)
  {EXIT_USAGE}  bad command line
  {EXIT_DENIED}  request --wait: Denied by an approver
  {EXIT_TIMED_OUT}  request --wait: TimedOut (no decision within the eligibility's pendingTimeout)
  {EXIT_REJECTED}  request --wait: Rejected (no eligibility covers it, or a limit was reached)
  {EXIT_ENDED}  request --wait: ended otherwise (Withdrawn, Revoked, Expired) before Active
  {EXIT_WAIT_TIMEOUT}  request --wait: still Pending when --timeout passed (the request stays)
  {EXIT_FOUND}  standing --fail-on: standing access at or above that severity was found
"""
_FINAL_CODES = {"Denied": EXIT_DENIED, "TimedOut": EXIT_TIMED_OUT, "Rejected": EXIT_REJECTED,
                "Withdrawn": EXIT_ENDED, "Revoked": EXIT_ENDED, "Expired": EXIT_ENDED}


class Failure(Exception):
    """One clear line for stderr, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# Output


def _age(moment: str | None, now: datetime.datetime) -> str:
    """Relative durations as kubectl shows them: 45s, 12m, 3h5m, 2d4h."""
    if not moment:
        return "-"
    then = datetime.datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return _span(abs((now - then).total_seconds()))


def _span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes and hours < 8 else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours and days < 8 else f"{days}d"


def _table(rows: list[list[str]], out: Any) -> None:
    if len(rows) <= 1:
        print("No resources found.", file=sys.stderr)
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                         ).rstrip(), file=out)


def _dump(value: Any, output: str, out: Any) -> None:
    if output == "json":
        print(json.dumps(value, indent=2, sort_keys=True), file=out)
    else:
        import yaml  # only when asked for
        print(yaml.safe_dump(value, sort_keys=True).rstrip(), file=out)


# The model of a request, as the commands show it.


def _role(item: dict[str, Any]) -> str:
    role = (item.get("spec") or {}).get("role") or {}
    return f"{role.get('kind', '?')}/{role.get('name', '?')}"


def _decisions(item: dict[str, Any], decision: str) -> list[str]:
    approvals = (item.get("status") or {}).get("approvals") or {}
    return sorted(u for u, entry in approvals.items() if entry.get("decision") == decision)


def _required(item: dict[str, Any], policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    name = (item.get("status") or {}).get("eligibility") or (item.get("spec") or {}).get(
        "eligibility")
    return dict(((policies.get(name or "") or {}).get("spec") or {}).get("approval") or {})


def _approvals(item: dict[str, Any], policies: dict[str, dict[str, Any]]) -> str:
    approval = _required(item, policies)
    required = approval.get("required", 1) if approval else "?"
    return f"{len(_decisions(item, 'Approve'))}/{required}"


def _left(item: dict[str, Any], now: datetime.datetime) -> str:
    status = item.get("status") or {}
    if status.get("phase") != "Active" or not status.get("expiresAt"):
        return "-"
    expires = datetime.datetime.fromisoformat(status["expiresAt"].replace("Z", "+00:00"))
    return _span(max(0.0, (expires - now).total_seconds()))


def _waiting_for(item: dict[str, Any], policies: dict[str, dict[str, Any]]) -> str:
    """Who may still approve, in words."""
    approval = _required(item, policies)
    if not approval:
        return "the approvers of its eligibility"
    decided = set((item.get("status") or {}).get("approvals") or {})
    users = [u for u in approval.get("users") or [] if u not in decided]
    groups = [f"group {g}" for g in approval.get("groups") or []]
    if approval.get("requiredFromGroup"):
        groups.append(f"one of group {approval['requiredFromGroup']}")
    return ", ".join(users + groups) or "nobody left"


def _progress(item: dict[str, Any], policies: dict[str, dict[str, Any]]) -> str:
    status = item.get("status") or {}
    phase = status.get("phase") or "Submitted"
    if phase == "Pending":
        return (f"Pending: {_approvals(item, policies).replace('/', ' of ')} approvals; "
                f"may still approve: {_waiting_for(item, policies)}")
    if phase == "Active":
        return f"Active until {status.get('expiresAt')} ({status.get('binding', {}).get('kind')}" \
               f" {status.get('binding', {}).get('name')})"
    return f"{phase}: {status.get('message') or ''}".rstrip(": ")


# Commands


def _me(api: Api) -> dict[str, Any]:
    return api.whoami()


def _eligibility_specs(api: Api) -> dict[str, Any]:
    """Every valid RoleEligibility's spec by name, as admission applies it.

    Invalid ones ignored, as admission does; less the subjects access reviews suspended.
    """
    from kubepim.api.eligibility import RoleEligibilitySpec
    from kubepim.domain.recertification import effective, suspensions_in

    specs = {}
    for item in api.eligibilities():
        try:
            spec = RoleEligibilitySpec.model_validate(item.get("spec") or {})
        except ValueError:
            continue
        specs[item["metadata"]["name"]] = effective(spec, suspensions_in(item.get("status")))
    return specs


def cmd_eligible(api: Api, args: argparse.Namespace) -> int:
    """What the caller may request, from the same domain function admission uses."""
    from kubepim.api.request import Requester
    from kubepim.domain.review import options

    user = _me(api)
    requester = Requester(username=str(user.get("username") or ""),
                          uid=str(user.get("uid") or ""), groups=list(user.get("groups") or []),
                          extra={k: list(v) for k, v in (user.get("extra") or {}).items()})
    found = options(requester, _eligibility_specs(api))
    if args.output in ("json", "yaml"):
        _dump([{"eligibility": o.eligibility, "roles": [str(r) for r in o.spec.roles],
                "where": o.places(o.eligibility), "namespaces": o.spec.namespaces,
                "clusterWide": o.spec.cluster_wide,
                "defaultDuration": duration.format_duration(o.spec.effective_default()),
                "maxDuration": o.spec.max_duration,
                "approval": o.spec.approval.model_dump(by_alias=True, exclude_none=True),
                "breakGlass": o.spec.break_glass.max_duration if o.spec.break_glass else None,
                "lacking": o.lacking} for o in found], args.output, sys.stdout)
        return EXIT_OK
    if not found:
        print(f"{requester.username} may request nothing: no RoleEligibility names them",
              file=sys.stderr)
        return EXIT_OK
    rows = [["ELIGIBILITY", "ROLES", "WHERE", "DEFAULT", "MAX", "APPROVAL", "BREAK-GLASS"]]
    for o in found:
        approval = o.spec.approval
        who = ", ".join([*approval.users, *(f"group {g}" for g in approval.groups)])
        rows.append([o.eligibility, ", ".join(str(r) for r in o.spec.roles),
                     " or ".join(o.places(o.eligibility)).removeprefix("in ")
                     if not o.lacking else f"(once your identity carries {o.lacking})",
                     duration.format_duration(o.spec.effective_default()), o.spec.max_duration,
                     f"{approval.required} of {who or 'nobody'}",
                     o.spec.break_glass.max_duration if o.spec.break_glass else "-"])
    _table(rows, sys.stdout)
    return EXIT_OK


_RBAC_PATH = "/apis/rbac.authorization.k8s.io/v1"


def cmd_standing(api: Api, args: argparse.Namespace) -> int:
    """Privileged RBAC held outside kubepim, ranked (docs/standing.md has the rules)."""
    from kubepim.domain import standing

    specs = _eligibility_specs(api)
    namespaces = {str(n["metadata"]["name"]): dict(n["metadata"].get("labels") or {})
                  for n in api.list_all("/api/v1/namespaces")}
    findings = standing.scan(
        api.list_all(f"{_RBAC_PATH}/roles"), api.list_all(f"{_RBAC_PATH}/clusterroles"),
        api.list_all(f"{_RBAC_PATH}/rolebindings"),
        api.list_all(f"{_RBAC_PATH}/clusterrolebindings"), specs, namespaces,
        include_system=args.include_system, accepted=args.accept)
    worst = standing.SEVERITIES.index(args.min_severity)
    findings = [f for f in findings if standing.SEVERITIES.index(f.severity) <= worst
                and (args.namespace is None or args.all_namespaces or f.scope == args.namespace)
                and (args.subject is None or f.subject == args.subject)
                and (args.role is None or f.role == args.role)]
    failing = args.fail_on is not None and any(
        standing.SEVERITIES.index(f.severity) <= standing.SEVERITIES.index(args.fail_on)
        for f in findings)
    if args.output == "eligibility":
        code = _as_eligibilities(findings)
        return EXIT_FOUND if failing and code == EXIT_OK else code
    if args.output in ("json", "yaml"):
        _dump([f.wire() for f in findings], args.output, sys.stdout)
        return EXIT_FOUND if failing else EXIT_OK
    wide = args.output == "wide"
    rows = [["SEVERITY", "SUBJECT", "ROLE", "WHERE", "RULES", *(
        ["BINDING", "COVERED-BY"] if wide else [])]]
    for f in findings:
        rules = ", ".join(f.rules) + (f" (only {', '.join(f.names)})" if f.names else "")
        rows.append([_visible(cell) for cell in (
            f.severity, f.subject, f.role, f.scope or "cluster", rules,
            *([f.binding, ", ".join(f.eligible) or "-"] if wide else []))])
    _table(rows, sys.stdout)
    return EXIT_FOUND if failing else EXIT_OK


def _subject(text: str) -> str:
    """--accept's argument: a subject as findings name it, or a message saying the format."""
    from kubepim.domain import standing

    try:
        return standing.parse_subject(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _visible(text: str) -> str:
    """``text`` with control and bidi characters shown as escapes (names are anyone's input)."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069]",
                  lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                  else f"\\u{ord(m.group()):04x}", text)


def _as_eligibilities(findings: list[Any]) -> int:
    """RoleEligibility manifests that would replace the standing bindings found, one per role.

    Approvers are for the user to fill in: until they are, no request under it can be approved
    (nothing is granted by an eligibility nobody may approve).
    """
    if not findings:
        print("nothing to replace: no standing binding matched", file=sys.stderr)
        return EXIT_OK
    # One per role and place: an eligibility never lets anyone request a role somewhere they
    # did not hold it.
    by_place: dict[tuple[str, str], list[Any]] = {}
    for finding in findings:
        by_place.setdefault((finding.role, finding.scope), []).append(finding)
    documents, skipped = [], []
    for (role, scope), found in sorted(by_place.items()):
        kind, _, rest = role.partition("/")
        name = rest.rsplit("/", 1)[-1]
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
            skipped.append(role)  # a RoleEligibility's role reference takes DNS names only
            continue
        subjects = []
        for subject in sorted({f.subject for f in found}):
            subject_kind, _, who = subject.partition("/")
            if subject_kind == "ServiceAccount":
                namespace, _, account = who.partition("/")
                subjects.append({"kind": subject_kind, "namespace": namespace, "name": account})
            else:
                subjects.append({"kind": subject_kind, "name": who})
        slug = re.sub(r"[^a-z0-9-]+", "-", f"{kind}-{name}-{scope or 'cluster'}".lower())
        slug = slug[:200].strip("-") or "role"
        spec: dict[str, Any] = {"subjects": subjects, "roles": [{"kind": kind, "name": name}],
                                "approval": {"users": [], "groups": []}}
        if scope:
            spec["namespaces"] = [scope]
        else:
            spec["clusterWide"] = True
        if any(f.deny_listed for f in found):
            spec["allowPrivilegedRoles"] = True  # (on kubepim's deny-list: say so explicitly)
        documents.append({"apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "RoleEligibility",
                          "metadata": {"name": f"standing-{slug}"}, "spec": spec})
    print("# Replaces these standing bindings (remove them once this is applied):")
    for f in findings:
        if f.role not in skipped:
            print(_visible(f"#   {f.binding} ({f.subject}, {f.severity})"))
    for role in skipped:
        print(_visible(f"# Not expressible as a RoleEligibility (the role's name is not a DNS "
                       f"name): {role}"))
    print("# spec.approval is empty: name approvers (users or groups); until then no request "
          "under it can be approved.")
    import yaml  # only when asked for
    print(yaml.safe_dump_all(documents, sort_keys=False).rstrip())
    return EXIT_OK


def _resolve_role(api: Api, text: str, cluster_wide: bool) -> dict[str, str]:
    """ROLE as kind/name, or a bare name looked up among the roles the caller may request."""
    if "/" in text:
        kind, _, name = text.partition("/")
        kinds = {"role": "Role", "clusterrole": "ClusterRole"}
        if kind.lower() not in kinds or not name:
            raise Failure(f"role {text!r}: write NAME, Role/NAME or ClusterRole/NAME")
        return {"kind": kinds[kind.lower()], "name": name}
    found = {str(role.get("kind")) for item in api.eligibilities()
             for role in (item.get("spec") or {}).get("roles") or [] if role.get("name") == text}
    if len(found) == 1:
        return {"kind": found.pop(), "name": text}
    # Both kinds, or unknown to every eligibility (admission refuses it and says what is
    # allowed): a ClusterRole cluster-wide, else a Role.
    return {"kind": "ClusterRole" if cluster_wide else "Role", "name": text}


def _generate_prefix(user: str, role: str) -> str:
    raw = f"{user.split(':')[-1]}-{role}".lower()
    cleaned = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:50].strip("-")
    return (cleaned or "request") + "-"


def cmd_request(api: Api, args: argparse.Namespace) -> int:
    """Create an AccessRequest (a generated name, printed); with --wait, follow it."""
    timeout = duration.parse(args.timeout).total_seconds() if args.wait else None
    role = _resolve_role(api, args.role, args.cluster_wide)
    spec: dict[str, Any] = {"role": role, "justification": args.reason or ""}
    if not args.cluster_wide:
        spec["namespace"] = args.namespace or api.connection.namespace
    for key, value in (("duration", args.for_), ("ticket", args.ticket),
                       ("eligibility", args.eligibility)):
        if value:
            spec[key] = value
    if args.break_glass:
        spec["breakGlass"] = True
    user = _me(api)
    body = {"apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"generateName": _generate_prefix(str(user.get("username") or ""),
                                                          role["name"])},
            "spec": spec}
    created = api.create(body, dry_run=args.dry_run == "server")
    name = created["metadata"]["name"]
    if args.dry_run == "server":
        print(f"accessrequest/{name} would be created (server dry run: admission accepted it;"
              " nothing was created)")
        return EXIT_OK
    print(f"accessrequest/{name} created")
    if not args.wait:
        return EXIT_OK
    return _wait(api, name, created["metadata"].get("resourceVersion"), timeout or 600)


def _wait(api: Api, name: str, version: str | None, timeout: float) -> int:
    """Follow one request through a watch until it is Active or final, or ``timeout`` passes."""
    import time
    deadline = time.monotonic() + timeout
    policies = {p["metadata"]["name"]: p for p in api.eligibilities()}
    shown = None
    item = api.request(name)
    version = item["metadata"].get("resourceVersion") or version
    while True:
        line = _progress(item, policies)
        if line != shown:
            stamp = datetime.datetime.now().strftime("%H:%M:%S")
            print(f"{stamp}  {line}", flush=True)
            shown = line
        phase = (item.get("status") or {}).get("phase")
        if phase == "Active":
            return EXIT_OK
        if phase in _FINAL_CODES:
            return _FINAL_CODES[phase]
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"still {phase or 'submitted'} after the --timeout; the request stays "
                  f"(kubectl pim show {name})", file=sys.stderr)
            return EXIT_WAIT_TIMEOUT
        params = {"fieldSelector": f"metadata.name={name}", "timeoutSeconds":
                  str(max(1, int(left))), "allowWatchBookmarks": "true"}
        if version:
            params["resourceVersion"] = version
        try:
            for event in api.watch(f"{GROUP_PATH}/accessrequests", params):
                obj = event.get("object") or {}
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if event.get("type") in ("ADDED", "MODIFIED"):
                    item = obj
                    break
                if event.get("type") == "DELETED":
                    raise Failure(f"accessrequest/{name} was deleted")
                if event.get("type") == "ERROR":
                    version = None  # too old: start from a fresh read
                    item = api.request(name)
                    break
        except ApiError as error:
            if error.status != 410:
                raise
            version = None
            item = api.request(name)


def cmd_ls(api: Api, args: argparse.Namespace) -> int:
    """List requests: all, the caller's (--mine), or those the caller may decide (--to-approve)."""
    selectors = []
    user: dict[str, Any] = {}
    if args.mine or args.to_approve:
        user = _me(api)
    if args.mine:
        selectors.append(f"spec.requester.username={user.get('username')}")
    if args.phase:
        selectors.append(f"status.phase={args.phase}")
    if args.to_approve:
        selectors.append("status.phase=Pending")
    items = api.requests(",".join(selectors) or None)
    if args.namespace and not args.all_namespaces:  # requests are cluster-scoped objects
        items = [i for i in items if (i.get("spec") or {}).get("namespace") == args.namespace]
    policies = {p["metadata"]["name"]: p for p in api.eligibilities()}
    if args.to_approve:
        items = _to_approve(items, policies, user)
    items.sort(key=lambda i: i["metadata"].get("creationTimestamp") or "")
    return _show_list(items, policies, args.output)


def _to_approve(items: list[dict[str, Any]], policies: dict[str, dict[str, Any]],
                user: dict[str, Any]) -> list[dict[str, Any]]:
    """Pending requests the caller may still decide.

    An approver under the governing eligibility (the domain's rule), not the requester, no
    decision given yet.
    """
    from kubepim.api.eligibility import Approvers
    from kubepim.domain.quorum import is_approver, person

    me, groups = str(user.get("username") or ""), list(user.get("groups") or [])
    mine = []
    for item in items:
        approval = _required(item, policies)
        requester = ((item.get("spec") or {}).get("requester") or {}).get("username", "")
        decided = (item.get("status") or {}).get("approvals") or {}
        if not approval or person(requester) == person(me) or me in decided:
            continue
        if is_approver(Approvers.model_validate(approval), me, groups):
            mine.append(item)
    return mine


def _show_list(items: list[dict[str, Any]], policies: dict[str, dict[str, Any]],
               output: str | None) -> int:
    if output in ("json", "yaml"):
        _dump({"apiVersion": "v1", "kind": "List", "items": items}, output, sys.stdout)
        return EXIT_OK
    if output == "name":
        for item in items:
            print(f"accessrequest.pim.kubepim.dev/{item['metadata']['name']}")
        return EXIT_OK
    now = datetime.datetime.now(datetime.UTC)
    wide = output == "wide"
    rows = [["NAME", "REQUESTER", "ROLE", "NAMESPACE", "PHASE", "APPROVALS", "LEFT", "AGE"]
            + (["ELIGIBILITY", "REASON"] if wide else [])]
    for item in items:
        spec, status = item.get("spec") or {}, item.get("status") or {}
        rows.append([item["metadata"]["name"], (spec.get("requester") or {}).get("username", "-"),
                     _role(item), spec.get("namespace") or "(cluster)",
                     status.get("phase") or "-", _approvals(item, policies), _left(item, now),
                     _age(item["metadata"].get("creationTimestamp"), now)]
                    + ([status.get("eligibility") or "-", spec.get("justification") or ""]
                       if wide else []))
    _table(rows, sys.stdout)
    return EXIT_OK


def cmd_show(api: Api, args: argparse.Namespace) -> int:
    """One request: a readable timeline, approvals, who may still approve, time left."""
    item = api.request(_pick(api, args, "show"))
    if args.output in ("json", "yaml"):
        _dump(item, args.output, sys.stdout)
        return EXIT_OK
    policies = {p["metadata"]["name"]: p for p in api.eligibilities()}
    now = datetime.datetime.now(datetime.UTC)
    spec, status = item.get("spec") or {}, item.get("status") or {}
    where = f"in namespace {spec['namespace']}" if spec.get("namespace") else "cluster-wide"
    print(f"Name:        {item['metadata']['name']}")
    print(f"Requester:   {(spec.get('requester') or {}).get('username', '-')}")
    print(f"Role:        {_role(item)} {where}")
    print(f"Duration:    {spec.get('duration') or '(the eligibility default)'}"
          + ("   BREAK-GLASS" if spec.get("breakGlass") else ""))
    print(f"Reason:      {spec.get('justification') or '-'}"
          + (f"   (ticket {spec['ticket']})" if spec.get("ticket") else ""))
    print(f"Phase:       {_progress(item, policies)}")
    if status.get("phase") == "Active":
        print(f"Time left:   {_left(item, now)}")
    if status.get("binding"):
        binding = status["binding"]
        print(f"Binding:     {binding.get('kind')} {binding.get('name')}"
              + (f" in {binding['namespace']}" if binding.get("namespace") else ""))
    used = status.get("activity")
    if used:
        print(f"Activity:    {_used(used)}")
    approvals = status.get("approvals") or {}
    if approvals:
        print("Decisions:")
        for who in sorted(approvals):
            entry = approvals[who]
            comment = f": {entry['comment']}" if entry.get("comment") else ""
            print(f"  {entry.get('decision')} by {who}{comment}")
    if status.get("history"):
        print("Timeline:")
        for entry in status["history"]:
            stamp = entry.get("time", "")
            print(f"  {stamp}  {entry.get('action'):<16} {entry.get('actor', '')}: "
                  f"{entry.get('reason', '')}".rstrip(": "))
    return EXIT_OK


def _used(recorded: dict[str, Any]) -> str:
    """status.activity in one line (from the API server's audit stream: docs/activity.md)."""
    from kubepim.api.request import Activity  # (pydantic: only when there is one to show)
    from kubepim.domain import activity

    try:
        return activity.summary(Activity.model_validate(recorded)) + (
            f"; last {recorded['lastUse']}" if recorded.get("lastUse") else "")
    except ValueError:
        return "(unreadable)"


def _candidates(api: Api, verb: str, user: dict[str, Any]) -> list[dict[str, Any]]:
    """What the caller may act on with ``verb`` (for the pick list)."""
    me = str(user.get("username") or "")
    policies = {p["metadata"]["name"]: p for p in api.eligibilities()}
    if verb in ("approve", "deny"):
        return _to_approve(api.requests("status.phase=Pending"), policies, user)
    if verb == "withdraw":
        return api.requests(f"spec.requester.username={me},status.phase=Pending")
    if verb == "end":
        return api.requests(f"spec.requester.username={me},status.phase=Active")
    if verb == "ack":
        waiting = [i for i in api.requests() if (i.get("status") or {}).get("reviewRequired")
                   and not (i.get("status") or {}).get("reviewedBy")]
        return [i for i in waiting if _approver_of(i, policies, user)]
    if verb == "revoke":
        return [i for i in api.requests("status.phase=Active")
                if _approver_of(i, policies, user)]
    return api.requests(f"spec.requester.username={me}")  # show


def _approver_of(item: dict[str, Any], policies: dict[str, dict[str, Any]],
                 user: dict[str, Any]) -> bool:
    from kubepim.api.eligibility import Approvers
    from kubepim.domain.quorum import is_approver

    approval = _required(item, policies)
    return bool(approval) and is_approver(Approvers.model_validate(approval),
                                          str(user.get("username") or ""),
                                          list(user.get("groups") or []))


def _pick(api: Api, args: argparse.Namespace, verb: str) -> str:
    """NAME as given, or chosen from a numbered list on an interactive terminal."""
    if args.name:
        return str(args.name)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise Failure(f"NAME is required: kubectl pim {verb} NAME (a list to pick from is "
                      "offered only on an interactive terminal)", EXIT_USAGE)
    items = _candidates(api, verb, _me(api))
    if not items:
        raise Failure(f"nothing to {verb}: no request you may {verb} right now")
    now = datetime.datetime.now(datetime.UTC)
    rows = [["#", "NAME", "REQUESTER", "ROLE", "NAMESPACE", "PHASE", "AGE"]]
    for number, item in enumerate(items, start=1):
        spec = item.get("spec") or {}
        rows.append([str(number), item["metadata"]["name"],
                     (spec.get("requester") or {}).get("username", "-"), _role(item),
                     spec.get("namespace") or "(cluster)",
                     (item.get("status") or {}).get("phase") or "-",
                     _age(item["metadata"].get("creationTimestamp"), now)])
    _table(rows, sys.stdout)
    answer = input(f"{verb} which one? [1-{len(items)}, Enter to cancel] ").strip()
    if not answer:
        raise Failure("cancelled: nothing was changed")
    if not answer.isdigit() or not 1 <= int(answer) <= len(items):
        raise Failure(f"{answer!r} is not a number from 1 to {len(items)}: nothing was changed")
    return str(items[int(answer) - 1]["metadata"]["name"])


def _decide(decision: str, verb: str) -> Callable[[Api, argparse.Namespace], int]:
    def command(api: Api, args: argparse.Namespace) -> int:
        args.name = _pick(api, args, verb)
        me = str(_me(api).get("username") or "")
        entry: dict[str, Any] = {"decision": decision}
        text = getattr(args, "reason", None) or getattr(args, "comment", None)
        if text:
            entry["comment"] = text
        api.patch_status(args.name, {"approvals": {me: entry}})
        print(f"accessrequest/{args.name}: {decision} recorded as {me}")
        return EXIT_OK
    return command


def _act(action: str, verb: str) -> Callable[[Api, argparse.Namespace], int]:
    def command(api: Api, args: argparse.Namespace) -> int:
        args.name = _pick(api, args, verb)
        me = str(_me(api).get("username") or "")
        entry = {"action": action, "reason": getattr(args, "reason", None) or ""}
        api.patch_status(args.name, {"actions": {me: entry}})
        print(f"accessrequest/{args.name}: {action} recorded as {me}")
        return EXIT_OK
    return command


def cmd_watch(api: Api, args: argparse.Namespace) -> int:
    """A live stream of changes (a watch, not polling) until interrupted."""
    user = _me(api) if args.mine or args.to_approve else {}
    selector = f"spec.requester.username={user.get('username')}" if args.mine else None
    policies = {p["metadata"]["name"]: p for p in api.eligibilities()}
    params = {"allowWatchBookmarks": "true", **({"fieldSelector": selector} if selector else {})}
    while True:
        for event in api.watch(f"{GROUP_PATH}/accessrequests", params):
            obj = event.get("object") or {}
            params["resourceVersion"] = (obj.get("metadata") or {}).get("resourceVersion") or ""
            if event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            if args.to_approve and not _to_approve([obj], policies, user):
                continue
            stamp = datetime.datetime.now().strftime("%H:%M:%S")
            what = "deleted" if event["type"] == "DELETED" else _progress(obj, policies)
            print(f"{stamp}  {obj['metadata']['name']}  {_role(obj)}  {what}", flush=True)


# The command line


def _may_review(run: dict[str, Any], subject: dict[str, Any], user: dict[str, Any]) -> bool:
    """Whether the caller may decide on the subject (the webhook decides; this is the list's)."""
    name, groups = str(user.get("username") or ""), list(user.get("groups") or [])
    allowed: dict[str, Any] = next((r for r in run["spec"].get("reviewers") or []
                    if r.get("eligibility") == subject.get("eligibility")), {})
    if name not in (allowed.get("users") or []) and \
            not set(groups) & set(allowed.get("groups") or []):
        return False
    who = subject.get("subject") or {}
    if who.get("kind") == "Group":
        return who.get("name") not in groups
    if who.get("kind") == "ServiceAccount":
        return name != f"system:serviceaccount:{who.get('namespace')}:{who.get('name')}"
    return who.get("name") != name


def cmd_reviews(api: Api, args: argparse.Namespace) -> int:
    """List access review runs, with what is left for the caller to decide."""
    user = _me(api)
    runs = api.list_all(f"{GROUP_PATH}/eligibilityreviewruns")
    if args.open:
        runs = [r for r in runs if (r.get("status") or {}).get("phase") != "Completed"]
    runs.sort(key=lambda r: (r.get("spec") or {}).get("startedAt") or "")
    if args.output:
        _dump(runs, args.output, sys.stdout)
        return EXIT_OK
    rows = [["NAME", "REVIEW", "PHASE", "DEADLINE", "SUBJECTS", "YOURS TO DECIDE"]]
    me = str(user.get("username") or "")
    for run in runs:
        status = run.get("status") or {}
        mine = ((status.get("decisions") or {}).get(me) or {}).get("subjects") or {}
        open_ = status.get("phase") != "Completed"
        left = [s["id"] for s in run["spec"].get("subjects") or []
                if open_ and s["id"] not in mine and _may_review(run, s, user)]
        rows.append([run["metadata"]["name"], run["spec"].get("review", ""),
                     status.get("phase") or "", run["spec"].get("deadline", ""),
                     str(len(run["spec"].get("subjects") or [])), str(len(left))])
    _table(rows, sys.stdout)
    return EXIT_OK


def cmd_review(api: Api, args: argparse.Namespace) -> int:
    """Record decisions on a run's subjects, as the caller (admission checks who may)."""
    me = str(_me(api).get("username") or "")
    subjects: dict[str, Any] = {}
    for decision, ids in (("Keep", args.keep), ("Remove", args.remove),
                          ("Reinstate", args.reinstate)):
        for subject in ids:
            if subject in subjects:
                raise Failure(f"{subject} is named twice: one decision per subject")
            subjects[subject] = {"decision": decision,
                                 **({"comment": args.comment} if args.comment else {})}
    if not subjects:
        raise Failure("name subjects with --keep, --remove or --reinstate (their ids: "
                      f"kubectl get erun {args.name} -o yaml, spec.subjects[].id)")
    api.patch_run_status(args.name, {"decisions": {me: {"subjects": subjects}}})
    for subject, entry in subjects.items():
        print(f"eligibilityreviewrun/{args.name}: {entry['decision']} {subject} recorded as "
              f"{me}")
    return EXIT_OK


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line.

    With ``only``, the other commands are named but not built: each command's flags cost
    start-up time, and only one command runs.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", help="path to the kubeconfig (default: $KUBECONFIG)")
    common.add_argument("--context", help="the kubeconfig context to use")
    common.add_argument("-n", "--namespace",
                        help="namespace of the role (request); with ls, only requests for it")
    common.add_argument("--as", dest="as_user", help="act as this user (impersonation)")
    common.add_argument("--as-group", dest="as_groups", action="append", default=[],
                        help="act with this group (repeatable)")
    common.add_argument("--request-timeout", default="30s",
                        help="timeout of each API call (default 30s)")
    parser = argparse.ArgumentParser(
        prog="kubectl pim", description=__doc__.split("\n\n", 1)[0],
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Callable[[Api, argparse.Namespace], int], text: str,
            output: Sequence[str] = ()) -> argparse.ArgumentParser:
        if only is not None and name != only:
            commands.add_parser(name, help=text)
            return argparse.ArgumentParser(add_help=False)  # its flags go nowhere
        sub = commands.add_parser(name, parents=[common], help=text, description=text,
                                  epilog=EXIT_CODES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        if output:
            sub.add_argument("-o", "--output", choices=list(output),
                             help="output format (default: a table)")
        return sub

    add("eligible", cmd_eligible, "what you may request: roles, where, durations, approvers",
        ("json", "yaml"))
    sub = add("request", cmd_request, "ask for a role; prints the generated request name")
    sub.add_argument("role", metavar="ROLE", help="NAME, Role/NAME or ClusterRole/NAME")
    sub.add_argument("--cluster-wide", action="store_true",
                     help="a ClusterRole everywhere (no namespace)")
    sub.add_argument("--for", dest="for_", metavar="DURATION",
                     help="how long, e.g. 30m (default: the eligibility's default)")
    sub.add_argument("--reason", required=True, help="why (the justification, recorded)")
    sub.add_argument("--ticket", help="ticket reference, if the eligibility asks for one")
    sub.add_argument("--eligibility", help="request under this RoleEligibility")
    sub.add_argument("--break-glass", action="store_true",
                     help="activate at once without approval (reviewed afterwards)")
    sub.add_argument("--wait", action="store_true",
                     help="follow it until Active or final (exit codes below)")
    sub.add_argument("--timeout", default="10m", help="with --wait: give up after (default 10m)")
    sub.add_argument("--dry-run", choices=["none", "server"], default="none",
                     help="server: admission decides, nothing is created")
    for name, text in (("ls", "list requests (all you may see by default)"),
                       ("watch", "a live stream of changes (a watch)")):
        sub = add(name, cmd_ls if name == "ls" else cmd_watch, text,
                  ("wide", "json", "yaml", "name") if name == "ls" else ())
        sub.add_argument("--mine", action="store_true", help="only your requests")
        sub.add_argument("--to-approve", action="store_true",
                         help="only Pending requests you may still decide")
        if name == "ls":
            sub.add_argument("--phase", help="only requests in this phase (e.g. Active)")
            sub.add_argument("-A", "--all-namespaces", action="store_true",
                             help="requests for every namespace and cluster-wide (the default; "
                             "-n NS keeps those for roles in NS)")
    sub = add("standing", cmd_standing, "privileged RBAC held outside kubepim, ranked "
              "(docs/standing.md)", ("wide", "json", "yaml", "eligibility"))
    sub.add_argument("-A", "--all-namespaces", action="store_true",
                     help="every namespace and cluster-wide (the default; -n NS keeps NS's)")
    sub.add_argument("--min-severity", choices=["critical", "high", "medium"],
                     default="medium", help="leave out what is less severe (default medium)")
    sub.add_argument("--subject", help="only this subject: User/NAME, Group/NAME or "
                     "ServiceAccount/NAMESPACE/NAME")
    sub.add_argument("--role", help="only this role: ClusterRole/NAME or Role/NAMESPACE/NAME")
    sub.add_argument("--include-system", action="store_true",
                     help="also the control plane's own identities (left out by default)")
    sub.add_argument("--accept", action="append", default=[], type=_subject,
                     metavar="SUBJECT", help="leave out a subject whose standing access you "
                     "have reviewed and accept (repeatable; the operator's setting: "
                     "standing.accept)")
    sub.add_argument("--fail-on", choices=["critical", "high", "medium"],
                     help=f"exit {EXIT_FOUND} if anything at or above this severity is listed "
                     "(for CI)")
    sub = add("reviews", cmd_reviews, "access review runs, and what is yours to decide "
              "(docs/reviews.md)", ("json", "yaml"))
    sub.add_argument("--open", action="store_true", help="only runs not completed")
    sub = add("review", cmd_review, "record your decisions in an access review run")
    sub.add_argument("name", metavar="RUN", help="the EligibilityReviewRun")
    for flag, text in (("--keep", "keep this subject eligible"),
                       ("--remove", "remove (suspend) this subject"),
                       ("--reinstate", "lift a suspension this completed run made")):
        sub.add_argument(flag, action="append", default=[], metavar="SUBJECT_ID",
                         help=f"{text} (repeatable; ids as spec.subjects[].id)")
    sub.add_argument("--comment", help="why (recorded with each decision)")
    sub = add("show", cmd_show, "one request: timeline, decisions, who may still approve",
              ("json", "yaml"))
    sub.add_argument("name", metavar="NAME", nargs="?",
                     help="the request (omitted on a terminal: pick from a list)")
    for name, decision, text in (("approve", "Approve", "approve a request, as yourself"),
                                 ("deny", "Deny", "deny a request (final), as yourself"),
                                 ("ack", "Acknowledge", "acknowledge (review) a break-glass "
                                  "grant")):
        sub = add(name, _decide(decision, name), text)
        sub.add_argument("name", metavar="NAME", nargs="?",
                         help="the request (omitted on a terminal: pick from a list)")
        if name == "deny":
            sub.add_argument("--reason", required=True, help="why (recorded)")
        else:
            sub.add_argument("--comment", help="a comment (recorded)")
    for name, action, text, reason in (
            ("withdraw", "Withdraw", "withdraw your own pending request", False),
            ("end", "End", "end your own active grant early", False),
            ("revoke", "Revoke", "revoke a grant (approvers, or RBAC verb revoke)", True)):
        sub = add(name, _act(action, name), text)
        sub.add_argument("name", metavar="NAME", nargs="?",
                         help="the request (omitted on a terminal: pick from a list)")
        sub.add_argument("--reason", required=reason, help="why (recorded)")
    return parser


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


_VALUED = {"--kubeconfig", "--context", "-n", "--namespace", "--as", "--as-group",
           "--request-timeout"}


def _commands_first(argv: list[str], commands: set[str]) -> list[str]:
    """Kubectl's flags may come before the command (``kubectl pim --as bob approve X``)."""
    before: list[str] = []
    rest = list(argv)
    while rest and rest[0] not in commands:
        flag = rest.pop(0)
        before.append(flag)
        if flag in _VALUED and rest:
            before.append(rest.pop(0))
    if not rest:
        return argv
    return [rest[0], *before, *rest[1:]]


def main(argv: list[str] | None = None) -> int:
    """The plugin's entry point (``kubectl-pim``)."""
    words = _commands_first(list(sys.argv[1:] if argv is None else argv), set(_COMMANDS))
    parser = _parser(words[0] if words and words[0] in _COMMANDS else None)
    args = parser.parse_args(words)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # Durations are checked before anything is read or sent.
    for flag, attribute in (("--request-timeout", "request_timeout"), ("--for", "for_"),
                            ("--timeout", "timeout")):
        value = getattr(args, attribute, None)
        if value is not None:
            try:
                duration.parse(value)
            except ValueError as error:
                _fail(f"{flag} {error}", EXIT_ERROR)
    timeout = duration.parse(args.request_timeout).total_seconds()
    try:
        connection = load(args.kubeconfig, args.context)
        api = Api(connection, args.as_user, args.as_groups, timeout=timeout)
        code: int = args.handler(api, args)
        return code
    except Failure as failure:
        _fail(str(failure), failure.code)
    except ApiError as error:
        _fail(error.message, EXIT_ERROR)
    except (ConfigError, Unreachable) as error:
        _fail(str(error), EXIT_ERROR)
    except KeyboardInterrupt:
        return 130
    except OSError as error:
        _fail(str(error), EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())


_COMMANDS = ("eligible", "request", "ls", "watch", "standing", "reviews", "review", "show",
             "approve", "deny", "ack", "withdraw", "end", "revoke")
_NAMED = ("show", "approve", "deny", "ack", "withdraw", "end", "revoke")


def complete(argv: list[str] | None = None) -> int:
    """Shell completion, as kubectl asks a plugin for it (``kubectl_complete-pim``).

    kubectl's own bash and zsh completion (``source <(kubectl completion bash)``) runs this
    executable with the words after ``kubectl pim``, the last being the one to complete; it
    prints one candidate per line, then cobra's directive line (``:4``: no file names).
    Completes commands, flags, request names and the role names of RoleEligibilities.
    """
    words = list(sys.argv[1:] if argv is None else argv) or [""]
    partial, before = words[-1], words[:-1]
    positional = [w for w in before if not w.startswith("-")]
    candidates: list[str] = []
    if partial.startswith("-"):
        parser = _parser()
        command = positional[0] if positional else None
        for action in (_subparser(parser, command) or parser)._actions:
            candidates += [o for o in action.option_strings if o.startswith("--")]
    elif not positional:
        candidates = list(_COMMANDS)
    elif len(positional) == 1 and positional[0] in (*_NAMED, "request"):
        candidates = _remote_candidates(positional[0], before)
    for candidate in sorted({c for c in candidates if c.startswith(partial)}):
        print(candidate)
    print(":4")
    return EXIT_OK


def _subparser(parser: argparse.ArgumentParser, command: str | None
               ) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            chosen: argparse.ArgumentParser = action.choices[command]
            return chosen
    return None


def _remote_candidates(command: str, words: list[str]) -> list[str]:
    """Request names or eligible role names, as the caller (no error ever printed)."""
    flags = argparse.ArgumentParser(add_help=False)
    for flag in ("--kubeconfig", "--context", "--as", "-n", "--namespace"):
        flags.add_argument(flag)
    flags.add_argument("--as-group", action="append", default=[])
    known, _ = flags.parse_known_args(words)
    try:
        api = Api(load(known.kubeconfig, known.context), getattr(known, "as"),
                  known.as_group, timeout=5)
        if command == "request":
            return sorted({str(role.get("name")) for item in api.eligibilities()
                           for role in (item.get("spec") or {}).get("roles") or []})
        return [str(item["metadata"]["name"]) for item in api.requests(
            None if command == "show" else "status.settled!=true")]
    except (ConfigError, ApiError, Unreachable, OSError, ValueError):
        return []
