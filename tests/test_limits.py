"""Documented, enforced caps (README "Security / limits") and the per-request deadline (issue 16):
each limit answers its status with a FHIR OperationOutcome naming it, before the expensive work."""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.auth import SCOPES, LocalKeys
from shared.config import Limits, load_settings
from shared.errors import ConfigError, check_deadline
from shared.fhir.parse import json_shape
from tests.test_history_api import assert_outcome
from tests.test_necessity_api import RXNORM, egfr_bundle

FHIR = {"Content-Type": "application/fhir+json"}


class Api:
    """The embedded default app under the given environment, with a token of every scope."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        from oncotwin.app import create_app

        self.settings = load_settings({"ONCOTWIN_DATA_DIR": str(tmp_path / "var"), **env})
        self.app: Flask = create_app(self.settings)
        self.client: FlaskClient = self.app.test_client()
        keys = LocalKeys(self.settings.data_dir)
        keys.ensure()
        token = keys.mint(
            "dr", list(SCOPES), 600, issuer=self.settings.token_issuer, audience=self.settings.token_audience
        )
        self.auth = {"Authorization": f"Bearer {token}"}

    def post(self, url: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return self.client.post(url, data=data, headers=self.auth | (headers or FHIR))


@pytest.fixture
def api(tmp_path: Path) -> Callable[..., Api]:
    return lambda **env: Api(tmp_path, **env)


def with_orders(count: int) -> dict[str, Any]:
    bundle = egfr_bundle()
    order = bundle["entry"][-1]["resource"]
    for i in range(count - 1):
        extra = copy.deepcopy(order) | {"id": f"order-extra-{i}"}
        extra["medicationCodeableConcept"] = {
            "coding": [{"system": RXNORM, "code": "1721560", "display": "osimertinib"}]
        }
        bundle["entry"].append({"resource": extra})
    return bundle


# --- settings -------------------------------------------------------------------------------------


def test_defaults_and_validation() -> None:
    limits = load_settings({}).limits
    assert limits == Limits()
    assert (limits.max_bundle_entries, limits.max_json_depth, limits.max_necessity_orders) == (10_000, 64, 200)
    assert (limits.max_note_chars, limits.radiology_max_batch_chars, limits.request_deadline_s) == (
        100_000,
        1_000_000,
        30.0,
    )
    changed = load_settings({"MAX_BUNDLE_ENTRIES": "5", "REQUEST_DEADLINE_SECONDS": "2.5"}).limits
    assert changed.max_bundle_entries == 5 and changed.request_deadline_s == 2.5
    for name, bad in (
        ("MAX_BUNDLE_ENTRIES", "0"),
        ("MAX_JSON_DEPTH", "4"),
        ("MAX_NECESSITY_ORDERS", "many"),
        ("MAX_NOTE_CHARS", "10"),
        ("RADIOLOGY_MAX_BATCH_CHARS", "-1"),
        ("REQUEST_DEADLINE_SECONDS", "0"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: bad})


def test_json_shape_counts_outside_strings() -> None:
    assert json_shape(b"{}", 64) == (1, 1)
    assert json_shape('{"a": [1, {"b": "]]] \\" [[ {"}], "c": "\\\\"}', 64) == (3, 3)
    assert json_shape(b"[" * 100 + b"]" * 100, 64) == (100, 65)  # deeper than the cap counts as cap + 1
    assert json_shape(b"{not json", 64) == (1, 0)  # unbalanced: left to the parser


# --- size caps ------------------------------------------------------------------------------------


def test_body_over_max_body_bytes_is_413(api: Callable[..., Api]) -> None:
    client = api(MAX_BODY_BYTES="1000")
    assert_outcome(client.post("/history/v1/timeline", b" " * 1001), 413, "1000 bytes")


def test_bundle_entries_over_the_cap_is_413(api: Callable[..., Api]) -> None:
    client = api(MAX_BUNDLE_ENTRIES="5")
    assert client.post("/history/v1/timeline", egfr_bundle()).status_code == 200  # 5 entries
    bundle = egfr_bundle()
    bundle["entry"].append({"resource": {"resourceType": "Basic", "id": "b"}})
    assert_outcome(client.post("/history/v1/timeline", bundle), 413, "MAX_BUNDLE_ENTRIES")
    nested = egfr_bundle()  # 4 + a Bundle of 2: 7 counted
    nested["entry"][-1] = {
        "resource": {"resourceType": "Bundle", "type": "collection", "entry": egfr_bundle()["entry"][:2]}
    }
    assert_outcome(client.post("/history/v1/timeline", nested), 413, "MAX_BUNDLE_ENTRIES")


def test_many_empty_entries_are_refused_before_parsing(
    api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.fhir.parse as parse

    parsed: list[int] = []
    original = parse.orjson.loads
    monkeypatch.setattr(parse.orjson, "loads", lambda data: parsed.append(len(data)) or original(data))
    client = api(MAX_BUNDLE_ENTRIES="10")  # at most 10 x 256 JSON objects and arrays
    body = '{"resourceType": "Bundle", "type": "collection", "entry": [' + ",".join(["{}"] * 3000) + "]}"
    assert_outcome(client.post("/history/v1/timeline", body), 413, "JSON objects and arrays")
    assert parsed == []  # nothing was built


def test_json_nesting_over_the_cap_is_400(api: Callable[..., Api]) -> None:
    client = api(MAX_JSON_DEPTH="20")

    def nested(levels: int) -> dict[str, Any]:
        bundle = egfr_bundle()
        ext: dict[str, Any] = {"url": "http://example.org/x", "valueString": "a"}
        for _ in range(levels):
            ext = {"url": "http://example.org/x", "extension": [ext]}
        bundle["entry"][1]["resource"]["extension"] = [ext]
        return bundle

    assert client.post("/history/v1/timeline", nested(7)).status_code == 200  # depth 20
    assert_outcome(client.post("/history/v1/timeline", nested(8)), 400, "deeper than 20 levels (MAX_JSON_DEPTH)")


def test_necessity_orders_over_the_cap_is_422(api: Callable[..., Api]) -> None:
    client = api(MAX_NECESSITY_ORDERS="3")
    assert len(client.post("/necessity/v1/evaluate", with_orders(3)).get_json()["determinations"]) == 3
    assert_outcome(client.post("/necessity/v1/evaluate", with_orders(4)), 422, "MAX_NECESSITY_ORDERS")
    one = client.post("/necessity/v1/evaluate?order=MedicationRequest/order-1", with_orders(4))
    assert one.status_code == 200 and len(one.get_json()["determinations"]) == 1


def test_long_notes_are_truncated_with_an_issue(api: Callable[..., Api]) -> None:
    client = api(MAX_NOTE_CHARS="1000")
    bundle = egfr_bundle()
    text = "Progression on osimertinib documented. " * 200  # 7800 characters
    for rid, form in (("doc-1", "content"), ("rep-1", "presentedForm")):
        attachment = {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}
        resource: dict[str, Any] = {"id": rid, "subject": {"reference": "Patient/egfr-1"}, "status": "final"}
        if form == "content":
            resource |= {
                "resourceType": "DocumentReference",
                "status": "current",
                "content": [{"attachment": attachment}],
            }
        else:
            resource |= {
                "resourceType": "DiagnosticReport",
                "code": {"text": "CT chest"},
                "presentedForm": [attachment],
            }
        bundle["entry"].append({"resource": resource})
    answer = client.post("/history/v1/timeline", bundle)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    truncated = [i for i in answer.get_json()["issues"] if "MAX_NOTE_CHARS" in i["message"]]
    assert {i["id"] for i in truncated} == {"doc-1", "rep-1"} and all(i["severity"] == "warning" for i in truncated)


def test_radiology_batch_text_over_the_cap_is_413(api: Callable[..., Api]) -> None:
    client = api(RADIOLOGY_MAX_BATCH_CHARS="1000")
    reports = [{"uid": str(i), "text": "No pleural effusion. " * 30} for i in range(2)]  # 1260 characters
    answer = client.post("/radiology/v1/classify/batch", {"reports": reports}, {"Content-Type": "application/json"})
    assert_outcome(answer, 413, "RADIOLOGY_MAX_BATCH_CHARS")


# --- the deadline ---------------------------------------------------------------------------------


def test_deadline_stops_a_radiology_batch_between_chunks(api: Callable[..., Api]) -> None:
    from services.radiology.app import ENGINE
    from services.radiology.service import CHUNK, LabelerEngine

    chunks: list[int] = []

    def slow_labeler(reports: Sequence[Any], schema: str) -> list[list[Any]]:
        chunks.append(len(reports))
        time.sleep(0.1)
        return [[] for _ in reports]

    client = api(REQUEST_DEADLINE_SECONDS="0.25")
    client.app.extensions[ENGINE] = LabelerEngine(labeler=slow_labeler)
    reports = [{"uid": str(i), "text": "No pleural effusion."} for i in range(8 * CHUNK)]
    started = time.monotonic()
    answer = client.post("/radiology/v1/classify/batch", {"reports": reports}, {"Content-Type": "application/json"})
    assert_outcome(answer, 503, "REQUEST_DEADLINE_SECONDS")
    assert answer.headers["Retry-After"] == "1"
    assert len(chunks) < 8 and time.monotonic() - started < 0.8  # it stopped; it did not finish unseen
    check_deadline()  # the deadline ended with its request: nothing left in this context
    small = client.post("/radiology/v1/classify/batch", {"reports": reports[:2]}, {"Content-Type": "application/json"})
    assert small.status_code == 200  # the process goes on serving


def test_deadline_stops_necessity_between_orders(api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch) -> None:
    from graph.queries import PathwayQueries

    evaluated: list[str] = []
    original = PathwayQueries.criteria_for

    def slow(self: PathwayQueries, order: Any, *args: Any, **kwargs: Any) -> Any:
        evaluated.append(order.reference)
        time.sleep(0.05)
        return original(self, order, *args, **kwargs)

    monkeypatch.setattr(PathwayQueries, "criteria_for", slow)
    client = api(REQUEST_DEADLINE_SECONDS="0.3")
    answer = client.post("/necessity/v1/evaluate", with_orders(40))
    assert_outcome(answer, 503, "REQUEST_DEADLINE_SECONDS")
    assert "Retry-After" in answer.headers and len(evaluated) < 40
    assert client.post("/necessity/v1/evaluate", egfr_bundle()).status_code == 200
