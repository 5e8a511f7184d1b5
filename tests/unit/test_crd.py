"""The CRDs are generated from the models: no drift, every field explained, useful columns."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubepim.api import crd
from kubepim.api.accessreview import EligibilityReview, EligibilityReviewRun
from kubepim.api.eligibility import RoleEligibility
from kubepim.api.notification import NotificationRoute
from kubepim.api.request import AccessRequest

REPO = Path(__file__).resolve().parents[2]
MODELS = [pytest.param(RoleEligibility, id="RoleEligibility"),
          pytest.param(AccessRequest, id="AccessRequest"),
          pytest.param(NotificationRoute, id="NotificationRoute"),
          pytest.param(EligibilityReview, id="EligibilityReview"),
          pytest.param(EligibilityReviewRun, id="EligibilityReviewRun")]


def _properties(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every named property below ``schema``, through objects, arrays and maps."""
    for name, prop in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", prop
        yield from _properties(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _properties(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _properties(schema["additionalProperties"], f"{path}{{}}")


def _schema(model: type[Any]) -> dict[str, Any]:
    return crd.crd(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crds_and_the_charts_copy_match_the_models() -> None:
    assert crd.drift(REPO) == [], "regenerate with `python -m kubepim.api.crd`"


def test_check_reports_missing_crds_and_passes_once_they_are_written(tmp_path: Path) -> None:
    assert crd.main(["--check", "--root", str(tmp_path)]) == 1
    assert len(crd.drift(tmp_path)) == 10  # five kinds, two copies
    assert crd.main(["--root", str(tmp_path)]) == 0
    assert crd.main(["--check", "--root", str(tmp_path)]) == 0


def test_check_reports_a_hand_edited_copy(tmp_path: Path) -> None:
    crd.main(["--root", str(tmp_path)])
    edited = tmp_path / "charts" / "kubepim" / "crds" / "pim.kubepim.dev_accessrequests.yaml"
    edited.write_text(edited.read_text().replace("Why the access is needed.", "Why."))
    assert crd.drift(tmp_path) == [str(edited)]


@pytest.mark.parametrize("model", MODELS)
def test_every_property_has_a_description_for_kubectl_explain(model: type[Any]) -> None:
    undescribed = [path for path, prop in _properties(_schema(model))
                   if path != ".metadata" and not prop.get("description", "").strip()]
    assert undescribed == []


@pytest.mark.parametrize("model", MODELS)
def test_object_bookkeeping_fields_are_described_too(model: type[Any]) -> None:
    props = _schema(model)["properties"]
    assert props["apiVersion"]["description"]
    assert props["kind"]["description"]
    assert props["status"]["properties"]["kopf"]["description"]
    assert props["status"]["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True


@pytest.mark.parametrize("model", MODELS)
def test_root_metadata_is_left_to_the_api_server(model: type[Any]) -> None:
    # The API server refuses anything but name/generateName restrictions on root metadata,
    # a description included, and serves ObjectMeta's own documentation in its place.
    assert _schema(model)["properties"]["metadata"] == {"type": "object"}


def _columns(model: type[Any]) -> dict[str, dict[str, Any]]:
    version = crd.crd(model)["spec"]["versions"][0]
    return {c["name"]: c for c in version["additionalPrinterColumns"]}


def test_accessrequest_columns_show_who_what_where_state_and_when() -> None:
    names = list(_columns(AccessRequest))
    wanted = ["Requester", "Role", "Namespace", "Phase", "Expires", "Age"]
    assert [n for n in names if n in wanted] == wanted


def _resolves(schema: dict[str, Any], json_path: str) -> bool:
    node = schema
    for name, list_filter in re.findall(r"\.(\w+)(\[[^\]]*\])?", json_path):
        if name == "metadata" and node is schema:
            return True  # served by the API server, not described in the CRD
        if name not in node.get("properties", {}):
            return False
        node = node["properties"][name]
        if list_filter:  # continue inside the list's items
            node = node["items"]
    return True


@pytest.mark.parametrize("model", MODELS)
def test_every_printer_column_points_at_a_field_of_the_schema(model: type[Any]) -> None:
    schema = _schema(model)
    broken = [c["jsonPath"] for c in _columns(model).values()
              if not _resolves(schema, c["jsonPath"])]
    assert broken == []
    assert _resolves(schema, ".spec.nonexistent") is False  # the walker can fail
