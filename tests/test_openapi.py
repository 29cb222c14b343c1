"""Every HTTP surface's OpenAPI 3.1 document: valid (openapi-spec-validator), served, and covering
every API route of the combined app; plus the bugs the fuzz run (``test_openapi_fuzz.py``) found."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import OpenAPIV31SpecValidator

from shared.auth import SCOPES

# Not part of an API: static files; the dashboard (pages and the JSON of its own pages, behind a
# dashboard session, README "Dashboard"); CDS Hooks, which describes itself by its own discovery
# endpoint (GET /cds-services, CDS Hooks 2.0), not by OpenAPI.
NOT_API = re.compile(r"^/(dashboard|cds-services)(/|$)")


def documents(client: FlaskClient, headers: dict[str, str], app: Flask) -> dict[str, dict[str, Any]]:
    """Every document the app serves, by its location (every ``.../openapi.json`` route)."""
    out = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.endswith("/openapi.json"):
            response = client.get(rule.rule, headers=headers)
            assert response.status_code == 200, rule.rule
            out[rule.rule] = response.get_json()
    return out


@pytest.fixture
def headers(mint: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(list(SCOPES))}"}


@pytest.fixture
def docs(app: Flask, client: FlaskClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    return documents(client, headers, app)


def test_every_openapi_document_is_valid_openapi_3_1(docs: dict[str, dict[str, Any]]) -> None:
    assert set(docs) == {
        "/openapi.json",
        "/history/v1/openapi.json",
        "/navigation/v1/openapi.json",
        "/necessity/v1/openapi.json",
        "/necessity/v1/audits/openapi.json",
        "/radiology/v1/openapi.json",
        "/v1/evaluations/openapi.json",
    }
    for location, doc in docs.items():
        assert doc["openapi"] == "3.1.0", location
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in OpenAPIV31SpecValidator(doc).iter_errors()
        ]
        assert errors == [], location


def _template(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_every_api_route_of_the_combined_app_is_in_an_openapi_document(
    app: Flask, docs: dict[str, dict[str, Any]]
) -> None:
    documented: set[tuple[str, str]] = set()
    for doc in docs.values():
        server = doc["servers"][0]["url"].rstrip("/")
        for path, item in doc["paths"].items():
            documented |= {(method.upper(), _template(server + path)) for method in item if method != "parameters"}
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or NOT_API.match(rule.rule):
            continue
        path = _template(re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule))
        missing += [
            f"{m} {rule.rule}" for m in sorted(rule.methods - {"HEAD", "OPTIONS"}) if (m, path) not in documented
        ]
    assert missing == []


def test_scopes_are_required_scopes_of_a_bearer_scheme_without_scopes(docs: dict[str, dict[str, Any]]) -> None:
    for location, doc in docs.items():
        schemes = doc["components"]["securitySchemes"]
        assert schemes == {"bearer": {**schemes["bearer"], "type": "http", "scheme": "bearer"}}, location
        for item in doc["paths"].values():
            for operation in item.values():
                assert all(r in ({}, {"bearer": []}) for r in operation.get("security", doc["security"]))
                assert set(operation.get("x-required-scopes", [])) <= set(SCOPES)
    radiology = docs["/radiology/v1/openapi.json"]["paths"]["/classify"]["post"]
    assert radiology["x-required-scopes"] == ["radiology.read"] and "radiology.read" in radiology["description"]
    evaluation = docs["/v1/evaluations/openapi.json"]["paths"]["/evaluations"]["post"]
    assert evaluation["x-required-scopes"] == ["history.read", "navigation.read", "necessity.read"]


def test_error_responses_are_the_operation_outcome_of_the_shared_contract(docs: dict[str, dict[str, Any]]) -> None:
    for doc in docs.values():
        outcome = doc["components"]["schemas"]["OperationOutcome"]
        assert outcome["properties"]["resourceType"]["const"] == "OperationOutcome"
        for item in doc["paths"].values():
            for operation in item.values():
                for code, response in operation["responses"].items():
                    if code >= "400":
                        schema = response["content"]["application/fhir+json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/OperationOutcome"}


def test_the_openapi_documents_need_a_token(client: FlaskClient, docs: dict[str, dict[str, Any]]) -> None:
    for location in docs:
        response = client.get(location)
        assert response.status_code == 401 and response.get_json()["resourceType"] == "OperationOutcome"
