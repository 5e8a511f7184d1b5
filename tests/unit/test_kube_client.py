"""The API-server adapter against a stand-in HTTP server on 127.0.0.1 (a narrow unit test:
the real API server proves the calls in tests/e2e). Checks what the adapter itself decides:
the credentials it sends, how answers map to exceptions, paging, and the wire shape of writes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kubepim.k8s.client import ApiError, Conflict, Forbidden, Kube, NotFound, NotLeading

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _kubeconfig(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "test", "user": {"token": "secret-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    return path


def _serve(tmp_path: Path, handler: Handler,
           scenario: Callable[[Kube], Awaitable[Any]]) -> tuple[Any, list[web.Request]]:
    """Run ``scenario`` with a Kube whose API server is ``handler``; the result and requests."""
    seen: list[web.Request] = []

    async def recording(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        return await handler(request)

    async def main() -> Any:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", recording)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        kube = Kube.connect(_kubeconfig(tmp_path, port))
        try:
            return await scenario(kube)
        finally:
            await kube.close()
            await runner.cleanup()

    return asyncio.run(main()), seen


def _status(code: int, message: str) -> Handler:
    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "message": message, "code": code},
                                 status=code)
    return answer


def test_every_call_carries_the_kubeconfig_token(tmp_path: Path) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"metadata": {"name": "r", "resourceVersion": "7"}})

    result, seen = _serve(tmp_path, ok, lambda kube: kube.get_request("r"))
    assert result["metadata"]["resourceVersion"] == "7"
    assert seen[0].headers["Authorization"] == "Bearer secret-token"
    assert seen[0].path == "/apis/pim.kubepim.dev/v1alpha1/accessrequests/r"


@pytest.mark.parametrize(("code", "error"), [
    (403, Forbidden), (409, Conflict), (500, ApiError), (422, ApiError)])
def test_failures_map_to_the_adapters_errors_with_the_servers_message(
    tmp_path: Path, code: int, error: type[ApiError]
) -> None:
    with pytest.raises(error, match="the server's reason") as raised:
        _serve(tmp_path, _status(code, "the server's reason"),
               lambda kube: kube.patch_request_status("r", {"phase": "Active"}, "5"))
    assert raised.value.status == code


def test_absent_objects_are_none_or_false_not_errors(tmp_path: Path) -> None:
    async def scenario(kube: Kube) -> list[Any]:
        return [await kube.get_request("r"), await kube.get_binding("RoleBinding", "b", "ns"),
                await kube.delete_binding("ClusterRoleBinding", "b", None),
                await kube.namespace_labels("ns"), await kube.role_rules("Role", "x", "ns")]

    result, _ = _serve(tmp_path, _status(404, "not found"), scenario)
    assert result == [None, None, False, None, None]
    with pytest.raises(NotFound):
        _serve(tmp_path, _status(404, "not found"),
               lambda kube: kube.patch_request_status("r", {}, "1"))


def test_lists_follow_continue_tokens_until_the_last_page(tmp_path: Path) -> None:
    async def pages(request: web.Request) -> web.Response:
        token = request.query.get("continue")
        assert request.query["limit"] == "500"
        if token is None:
            return web.json_response({"items": [{"n": 1}, {"n": 2}],
                                      "metadata": {"continue": "page-2"}})
        assert token == "page-2"
        return web.json_response({"items": [{"n": 3}], "metadata": {}})

    result, seen = _serve(tmp_path, pages, lambda kube: kube.list_requests())
    assert [item["n"] for item in result] == [1, 2, 3]
    assert len(seen) == 2


def test_status_writes_are_merge_patches_guarded_by_the_version_read(tmp_path: Path) -> None:
    bodies: list[Any] = []

    async def echo(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({"metadata": {"resourceVersion": "9"}})

    result, seen = _serve(tmp_path, echo,
                          lambda kube: kube.patch_request_status("r", {"phase": "Active"}, "8"))
    assert seen[0].method == "PATCH"
    assert seen[0].headers["Content-Type"] == "application/merge-patch+json"
    assert seen[0].path.endswith("/accessrequests/r/status")
    assert bodies == [{"metadata": {"resourceVersion": "8"}, "status": {"phase": "Active"}}]
    assert result["metadata"]["resourceVersion"] == "9"


def test_managed_bindings_are_listed_by_label_with_their_kind(tmp_path: Path) -> None:
    async def listing(request: web.Request) -> web.Response:
        assert request.query["labelSelector"] == "app.kubernetes.io/managed-by=kubepim"
        return web.json_response({"items": [{"metadata": {"name": request.path}}],
                                  "metadata": {}})

    result, _ = _serve(tmp_path, listing, lambda kube: kube.list_managed_bindings())
    assert {(b["kind"], b["metadata"]["name"]) for b in result} == {
        ("RoleBinding", "/apis/rbac.authorization.k8s.io/v1/rolebindings"),
        ("ClusterRoleBinding", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")}


def _binding(name: str) -> dict[str, Any]:
    return {"kind": "RoleBinding", "metadata": {"name": name, "namespace": "ns"}}


def test_a_fenced_sibling_writes_under_its_parents_fence_and_name(tmp_path: Path) -> None:
    """The revokes' own connections: no write once the parent's lease may have passed, and the
    parent's field manager as it is when each write goes (set after the sibling was made)."""
    async def scenario(kube: Kube) -> list[str]:
        revoker = kube.sibling(64, fenced=True)
        unfenced = kube.sibling()
        try:
            kube.fence, kube.field_manager = (lambda: 5.0), "kubepim-replica-a"
            await revoker.create_binding(_binding("b"))
            outcomes = [str(await revoker.delete_binding("RoleBinding", "b", "ns"))]
            kube.fence = lambda: 0.0  # the lease may have passed
            for client in (revoker, kube):
                try:
                    await client.delete_binding("RoleBinding", "b", "ns")
                    outcomes.append("sent")
                except NotLeading:
                    outcomes.append("not sent")
            await unfenced.create_binding(_binding("c"))
            assert (revoker.connections, unfenced.connections, kube.connections) == (64, 32, 32)
            return outcomes
        finally:
            await revoker.close()
            await unfenced.close()

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"metadata": {"resourceVersion": "7"}})

    outcomes, seen = _serve(tmp_path, answer, scenario)
    assert outcomes == ["True", "not sent", "not sent"]
    assert [r.method for r in seen] == ["POST", "DELETE", "POST"]
    assert seen[0].query.get("fieldManager") == "kubepim-replica-a"
    assert "fieldManager" not in seen[2].query  # an unfenced sibling writes under no name
