"""Access reviews on the real control plane (issue 17, docs/reviews.md): a run made when the
review is created, carol keeps one subject and removes one, nobody decides on the third; at the
deadline the removed and the undecided are suspended (their requests refused at kubectl apply,
naming the run; an active grant revoked), the kept one may still request, and the next run
starts on schedule."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from typing import Any

from tests.e2e import pim
from tests.e2e.support import Kubectl, OperatorProcess, poll
from tests.e2e.test_plugin import plugin


def _runs(kubectl: Kubectl, review: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json(
        "get", "eligibilityreviewruns", "-l", f"pim.kubepim.dev/review={review}")["items"]
    return sorted(items, key=lambda item: item["spec"]["startedAt"])


def _review(kubectl: Kubectl, namespace: str, every: str, within: str) -> str:
    """An EligibilityReview of the eligibility named after the namespace (same name), Suspend."""
    pim.apply(kubectl, {"apiVersion": "pim.kubepim.dev/v1alpha1", "kind": "EligibilityReview",
                        "metadata": {"name": namespace},
                        "spec": {"eligibilities": {"names": [namespace]}, "every": every,
                                 "decideWithin": within, "whenUndecided": "Suspend"}})
    return namespace


def _request(kubectl: Kubectl, name: str, namespace: str, user: str,
             check: bool = True) -> Any:
    return kubectl("create", "-f", "-", stdin=json.dumps(pim.access_request(
        name, role={"kind": "Role", "name": "pod-reader"}, namespace=namespace,
        duration="10m", justification="review test")), as_user=user, check=check)


def test_a_review_suspends_the_removed_and_the_undecided_at_its_deadline(
        kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, subjects=[
        {"kind": "User", "name": who} for who in ("alice", "bob", "dave")],
        approval={"users": ["carol"]})
    # bob holds a grant when the review starts.
    _request(kubectl, f"{namespace}-bob", namespace, "bob")
    pim.wait_phase(kubectl, f"{namespace}-bob", "Pending")
    pim.approve(kubectl, f"{namespace}-bob", "carol")
    pim.wait_phase(kubectl, f"{namespace}-bob", "Active")
    assert kubectl.can_i("list", "pods", as_user="bob", namespace=namespace) is True

    review = _review(kubectl, namespace, every="40s", within="15s")
    try:
        first = poll(lambda: (_runs(kubectl, review) or [None])[0], timeout=20,
                     what="the first run")
        run = first["metadata"]["name"]
        ids = [s["id"] for s in first["spec"]["subjects"]]
        assert ids == [f"{namespace}/User/alice", f"{namespace}/User/bob",
                       f"{namespace}/User/dave"]
        by_id = {s["id"]: s for s in first["spec"]["subjects"]}
        assert by_id[f"{namespace}/User/bob"]["grants"] == 1  # from kubepim's own records
        # (kubepim keeps requests 720h by default, less than unusedAfter's 2160h: it says so)
        assert by_id[f"{namespace}/User/dave"]["recommendation"] == \
            "no grant in kubepim's records (they reach back 720h)"
        assert first["spec"]["reviewers"] == [
            {"eligibility": namespace, "users": ["carol"], "groups": []}]

        # carol, through kubectl pim: what is hers to decide, then two decisions.
        listed = plugin(kubectl, "reviews", "--open", as_user="carol")
        assert listed.returncode == 0, listed.stderr
        row = next(line.split() for line in listed.stdout.splitlines() if run in line)
        assert row[2:3] == ["Open"] and row[-2:] == ["3", "3"]
        decided = plugin(kubectl, "review", run, "--keep", f"{namespace}/User/alice",
                         "--comment", "on call", as_user="carol")
        assert decided.returncode == 0, decided.stderr
        decided = plugin(kubectl, "review", run, "--remove", f"{namespace}/User/bob",
                         "--comment", "moved teams", as_user="carol")
        assert decided.returncode == 0, decided.stderr
        refused = plugin(kubectl, "review", run, "--keep", f"{namespace}/User/dave",
                         as_user="dave")  # dave may not vouch for himself
        assert refused.returncode != 0 and "is not a reviewer" in refused.stderr

        done = poll(lambda: (r := kubectl.json("get", "eligibilityreviewrun", run))
                    .get("status", {}).get("phase") == "Completed" and r, timeout=40,
                    what="the run completed at its deadline")
        outcomes = {k: v["outcome"] for k, v in done["status"]["outcomes"].items()}
        assert outcomes == {f"{namespace}/User/alice": "Kept",
                            f"{namespace}/User/bob": "Removed",
                            f"{namespace}/User/dave": "Suspended"}
        actions = [(e["action"], e.get("subject")) for e in done["status"]["history"]]
        assert actions.count(("Decided", f"{namespace}/User/bob")) == 1
        assert actions[0] == ("Started", None) and actions[-1] == ("Completed", None)

        # The removed subject's grant is revoked; the removed and undecided are refused.
        pim.wait_phase(kubectl, f"{namespace}-bob", "Revoked", timeout=20)
        assert kubectl.can_i("list", "pods", as_user="bob", namespace=namespace) is False
        for who in ("bob", "dave"):
            refused = _request(kubectl, f"{namespace}-{who}-2", namespace, who, check=False)
            assert refused.returncode != 0
            assert f"{who} is suspended from RoleEligibility {namespace} by review run {run}" \
                in refused.stderr
        _request(kubectl, f"{namespace}-alice", namespace, "alice")  # kept: still eligible
        offered = plugin(kubectl, "eligible", "-o", "json", as_user="bob")
        assert offered.returncode == 0, offered.stderr
        assert namespace not in [o["eligibility"] for o in json.loads(offered.stdout)]
        eligibility = kubectl.json("get", "roleeligibility", namespace)
        suspended = {e["subject"]["name"]: e["run"] for e in eligibility["status"]["suspended"]}
        assert suspended == {"bob": run, "dave": run}
        cleared = kubectl("patch", "roleeligibility", namespace, "--subresource=status",
                          "--type=merge", "-p", json.dumps({"status": {"suspended": []}}),
                          check=False)  # not even the cluster's admin clears a suspension
        assert cleared.returncode != 0
        assert "only the kubepim operator writes the status of a RoleEligibility" in \
            cleared.stderr
        condition = poll(lambda: next((c for c in kubectl.json(
            "get", "roleeligibility", namespace)["status"].get("conditions", [])
            if c["type"] == "SubjectsSuspended"), None), timeout=10, what="the condition")
        assert condition["status"] == "True" and "bob" in condition["message"]

        # The auditor's export of the run: a row per subject, decisions and outcome.
        exported = subprocess.run(
            [sys.executable, "-m", "kubepim.export", "--reviews", "--format", "json",
             f"--kubeconfig={kubectl.kubeconfig}", "--since", "2020-01-01"],
            capture_output=True, text=True, check=True, timeout=60)
        rows = {row["subject"]: row for row in json.loads(exported.stdout) if row["run"] == run}
        assert {who: row["outcome"] for who, row in rows.items()} == \
            {"alice": "Kept", "bob": "Removed", "dave": "Suspended"}
        assert rows["bob"]["decisions"] == "carol: Remove (moved teams)"
        assert rows["alice"]["decisions"] == "carol: Keep (on call)"

        # The next run on schedule, the suspended flagged in its snapshot.
        second = poll(lambda: runs[1] if len(runs := _runs(kubectl, review)) > 1 else None,
                      timeout=60, what="the second run")
        flagged = {s["subject"]["name"] for s in second["spec"]["subjects"] if s.get("suspended")}
        assert flagged == {"bob", "dave"}

        # Deleted and made again from git, the eligibility gets its suspensions back (the
        # completed run is the record): bob is still refused.
        manifest = kubectl.json("get", "roleeligibility", namespace)
        kubectl("delete", "roleeligibility", namespace)
        pim.apply(kubectl, {"apiVersion": manifest["apiVersion"], "kind": manifest["kind"],
                            "metadata": {"name": namespace}, "spec": manifest["spec"]})
        poll(lambda: {e["subject"]["name"] for e in (kubectl.json(
            "get", "roleeligibility", namespace).get("status") or {}).get("suspended", [])}
            == {"bob", "dave"}, timeout=15, what="the suspensions restored")
        refused = _request(kubectl, f"{namespace}-bob-3", namespace, "bob", check=False)
        assert refused.returncode != 0 and "bob is suspended from RoleEligibility" in \
            refused.stderr
    finally:
        kubectl("delete", "eligibilityreview", review, "--ignore-not-found", check=False)
        for item in _runs(kubectl, review):
            kubectl("delete", "eligibilityreviewrun", item["metadata"]["name"],
                    "--wait=false", check=False)


def test_an_operator_killed_at_the_deadline_applies_the_outcome_once_after_restart(
        kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    pim.pod_reader_for_alice(kubectl, namespace, subjects=[
        {"kind": "User", "name": who} for who in ("alice", "bob")],
        approval={"users": ["carol"]})
    review = _review(kubectl, namespace, every="1h", within="8s")
    try:
        run = poll(lambda: (_runs(kubectl, review) or [None])[0], timeout=20,
                   what="the run")["metadata"]["name"]
        kubectl("patch", "eligibilityreviewrun", run, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"decisions": {"carol": {"subjects": {
                    f"{namespace}/User/bob": {"decision": "Remove"}}}}}}), as_user="carol")
        poll(lambda: any(e["action"] == "Decided" for e in kubectl.json(
            "get", "eligibilityreviewrun", run)["status"].get("history", [])), timeout=10,
            what="the decision recorded")
        deadline = datetime.datetime.fromisoformat(
            kubectl.json("get", "eligibilityreviewrun", run)["spec"]["deadline"]
            .replace("Z", "+00:00"))
        # Killed just before its deadline timer fires; back after it has passed.
        poll(lambda: datetime.datetime.now(datetime.UTC) >= deadline - datetime.timedelta(
            seconds=0.5), timeout=15, what="half a second before the deadline")
        operator.kill()
        poll(lambda: datetime.datetime.now(datetime.UTC) > deadline, timeout=5,
             what="the deadline to pass")
        operator.start()
        done = poll(lambda: (r := kubectl.json("get", "eligibilityreviewrun", run))
                    .get("status", {}).get("phase") == "Completed" and r, timeout=30,
                    what="the run completed after the restart")

        actions = [(e["action"], e.get("subject")) for e in done["status"]["history"]]
        assert actions == [("Started", None), ("Decided", f"{namespace}/User/bob"),
                           ("Suspended", f"{namespace}/User/alice"),
                           ("Removed", f"{namespace}/User/bob"), ("Completed", None)]
        suspended = kubectl.json("get", "roleeligibility", namespace)["status"]["suspended"]
        assert sorted(e["subject"]["name"] for e in suspended) == ["alice", "bob"]
        # Each line at least once; a repeated id repeats the same line; one id per entry.
        lines = [json.loads(line.partition(" kubepim.audit ")[2])
                 for line in operator.log().splitlines() if " kubepim.audit " in line]
        mine = [line for line in lines if line.get("run") == run]
        first: dict[str, dict[str, Any]] = {}
        for line in mine:
            assert first.setdefault(line["id"], line) == line, "a repeated id, other words"
        uid = done["metadata"]["uid"]
        assert sorted(first) == [f"{uid}/{i}" for i in range(len(actions))]
        assert [(first[f"{uid}/{i}"]["action"], first[f"{uid}/{i}"]["subject"])
                for i in range(len(actions))] == actions
    finally:
        kubectl("delete", "eligibilityreview", review, "--ignore-not-found", check=False)
        for item in _runs(kubectl, review):
            kubectl("delete", "eligibilityreviewrun", item["metadata"]["name"],
                    "--wait=false", check=False)
