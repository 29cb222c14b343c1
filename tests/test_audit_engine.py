"""Batch necessity audits without a worker: inputs, store idempotency (SQLite and PostgreSQL),
in-process runs of every step, reports, and the HTTP API with an inline queue."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from services.medical_necessity.audit import run, store
from services.medical_necessity.audit.inputs import BULK, FILE, FOLDER, enumerate_paths, key
from services.medical_necessity.audit.report import (
    CSV_COLUMNS,
    HTML_CSP,
    LIST_SEPARATOR,
    report_csv,
    report_html,
    report_json,
)
from services.medical_necessity.audit.run import Auditor, Work
from services.medical_necessity.engine import REVIEWABLE_STATUSES, orders_to_review
from shared.config import Settings, load_settings
from shared.errors import InvalidInput, UpstreamError
from shared.fhir.codes import codings, concept_text
from shared.fhir.ingest import load_path
from shared.fhir.parse import read_path
from shared.fhir.record import PatientRecord
from shared.llm import LLMUnavailable
from shared.terminology import terminology
from tests.builders import order_for, patient
from tests.celery_support import postgres_database, servers_available
from tests.conftest import BULK as BULK_FOLDER
from tests.conftest import FHIR, requires_data, synthea

pytestmark = requires_data
ORDER_BUNDLES = ("Andy_Schaden", "Micah_Schinner", "Sherman_McGlynn", "Whitney_Ortiz")  # 2 orders each


def drain(auditor: Auditor, audit_id: str, work: Work) -> None:
    """Run every step in this process, as the workers would (breadth first)."""
    inputs, orders = list(work.inputs), list(work.orders)
    while inputs or orders:
        if inputs:
            found = auditor.expand(audit_id, *inputs.pop(0))
            inputs += found.inputs
            orders += found.orders
        else:
            auditor.evaluate(audit_id, *orders.pop(0).args(audit_id)[1:])


def orders_by_engine(paths: list[Path]) -> list[tuple[str, str]]:
    """(patient, order reference) of every order, from the engine's own choice per ingested record
    (once per input: the mCODE STU2 and STU3 examples reuse the same patient and order ids)."""
    found = []
    for path in paths:
        for record in load_path(path).records:
            found += sorted({(record.id, o.reference) for o in orders_to_review(record)})
    return found


def orders_by_definition(paths: list[Path]) -> set[str]:
    """Order references from the raw resources: a ServiceRequest, or a MedicationRequest of an
    antineoplastic drug, in a reviewable status (the definition the README gives)."""
    terms = terminology()
    found = set()
    for path in paths:
        for raw in read_path(path):
            res = raw.resource
            if raw.type not in ("MedicationRequest", "ServiceRequest") or res.get("status") not in REVIEWABLE_STATUSES:
                continue
            if raw.type == "MedicationRequest":
                concept = res.get("medicationCodeableConcept")
                names, drug_class = terms.drugs_in(codings(concept), concept_text(concept))
                if not names or drug_class in (None, "supportive"):
                    continue
            found.add(f"{raw.type}/{res['id']}")
    return found


def all_inputs() -> list[Path]:
    return [p for p in FHIR.iterdir() if p.is_dir()]


@pytest.fixture
def auditor(settings: Settings) -> Auditor:
    return Auditor(settings)


# -- inputs -----------------------------------------------------------------------------------------


def test_the_data_folder_is_one_input_per_bundle_and_one_per_exported_patient(tmp_path: Path) -> None:
    refs = enumerate_paths([FHIR], index_dir=tmp_path)
    files = [r for r in refs if r.startswith(FILE)]
    folders = sorted(Path(r.removeprefix(FOLDER)).name for r in refs if r.startswith(FOLDER))
    bulk = [r.removeprefix(BULK) for r in refs if r.startswith(BULK)]
    patients = [line for line in (BULK_FOLDER / "Patient.000.ndjson").read_text().splitlines() if line.strip()]
    assert len(bulk) == len(patients) and {b.rpartition("#")[0] for b in bulk} == {str(BULK_FOLDER)}
    bundles = [
        p
        for folder in ("synthea", "mcode-stu2-examples", "mcode-stu3-examples")
        for p in (FHIR / folder).glob("*.json")
    ]
    assert len(files) == len(bundles) >= 8 + 4 + 5  # one input per Bundle file
    assert folders == ["mcode-stu1-examples"]  # loose resources read together; an NDJSON export per patient


def test_a_corrupt_file_is_an_input_of_its_own(tmp_path: Path) -> None:
    shutil.copy(synthea("Andy_Schaden"), tmp_path / "good.json")
    (tmp_path / "corrupt.json").write_bytes(b'{"resourceType": "Bundle", "type": "collection", "entry": [')
    (tmp_path / "junk.json").write_bytes(b"\x00not json")
    shutil.copy(FHIR / "mcode-stu1-examples" / "Patient-mCODEPatientExample01.json", tmp_path / "patient.json")
    refs = enumerate_paths([tmp_path])
    assert sorted(refs) == sorted(
        [FILE + str(tmp_path / n) for n in ("corrupt.json", "good.json", "junk.json")] + [FOLDER + str(tmp_path)]
    )


def test_paths_must_stay_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.json").write_text("{}")
    (root / "link.json").symlink_to(tmp_path / "secret.json")
    for path in ("../secret.json", "link.json", "/etc/passwd"):
        with pytest.raises(InvalidInput, match="inside the audit input folder"):
            enumerate_paths([path], root)
    with pytest.raises(InvalidInput, match="no such file"):
        enumerate_paths(["missing.json"], root)


# -- a whole audit, in process ---------------------------------------------------------------------------


def test_an_audit_of_all_the_data_has_one_row_per_order(auditor: Auditor) -> None:
    audit_id, work = auditor.start([FHIR])
    drain(auditor, audit_id, work)
    rows = store.rows(auditor.db, audit_id)
    by_engine = orders_by_engine(all_inputs())
    by_definition = orders_by_definition(all_inputs())
    assert {r.reference for r in rows} == by_definition == {ref for _, ref in by_engine}
    assert sorted((r.patient, r.reference) for r in rows) == sorted(by_engine)  # each exactly once
    assert all(r.state == store.DONE and r.determination for r in rows)
    status = store.status(auditor.db, audit_id)
    assert status["state"] == store.FINISHED
    inputs = len(enumerate_paths([FHIR]))  # 17 Bundle files and 2 folders today
    assert status["orders"]["done"] == len(by_engine) == len(rows) > 8  # the 8 Synthea orders and mCODE's
    assert status["inputs"] == {"total": inputs, "pending": 0, "expanded": inputs, "error": 0, "cancelled": 0}
    assert sum(status["determinations"].values()) == len(rows)


def test_redelivered_steps_write_nothing_twice(auditor: Auditor) -> None:
    audit_id, work = auditor.start([synthea("Micah_Schinner")])
    (spec,) = work.inputs
    first = auditor.expand(audit_id, *spec)
    assert len(first.orders) == 2
    again = auditor.expand(audit_id, *spec)  # a redelivered expand: same rows, still pending
    assert [o.order_key for o in again.orders] == [o.order_key for o in first.orders]
    assert [auditor.evaluate(audit_id, *o.args(audit_id)[1:]) for o in first.orders] == [True, True]
    before = [(r.id, r.finished, r.determination) for r in store.rows(auditor.db, audit_id)]
    assert [auditor.evaluate(audit_id, *o.args(audit_id)[1:]) for o in first.orders] == [False, False]
    assert auditor.expand(audit_id, *spec).orders == []
    assert [(r.id, r.finished, r.determination) for r in store.rows(auditor.db, audit_id)] == before
    assert auditor.resume(audit_id).orders == []
    assert store.get_audit(auditor.db, audit_id).state == store.FINISHED


def test_a_corrupt_bundle_is_one_error_row_and_the_rest_complete(auditor: Auditor, tmp_path: Path) -> None:
    for name in ORDER_BUNDLES[:2]:
        shutil.copy(synthea(name), tmp_path / f"{name}.json")
    (tmp_path / "corrupt.json").write_bytes(synthea("Andy_Schaden").read_bytes()[:5000])
    audit_id, work = auditor.start([tmp_path])
    drain(auditor, audit_id, work)
    rows = store.rows(auditor.db, audit_id)
    errors = [r for r in rows if r.state == store.ERROR]
    assert len(errors) == 1
    assert errors[0].input.endswith("corrupt.json")
    assert "not valid JSON" in (errors[0].error or "")
    assert errors[0].reference is None
    assert [r.state for r in rows if r is not errors[0]] == [store.DONE] * 4
    assert store.status(auditor.db, audit_id)["state"] == store.FINISHED


def test_cancel_stops_pending_orders(auditor: Auditor) -> None:
    audit_id, work = auditor.start([synthea("Whitney_Ortiz")])
    found = auditor.expand(audit_id, *work.inputs[0])
    assert auditor.evaluate(audit_id, *found.orders[0].args(audit_id)[1:])
    store.cancel(auditor.db, audit_id)
    assert not auditor.evaluate(audit_id, *found.orders[1].args(audit_id)[1:])
    status = store.status(auditor.db, audit_id)
    assert status["state"] == store.CANCELLED
    assert status["orders"] | {"total": 2} == {"total": 2, "pending": 0, "done": 1, "error": 0, "cancelled": 1}
    assert auditor.resume(audit_id).orders == []


def test_a_fhir_server_search_becomes_one_input_per_patient(tmp_path: Path) -> None:
    from tests.test_fhir_server import TOKEN, FakeFhir, _load_bulk, serving

    with serving(FakeFhir(_load_bulk())) as fhir:
        env = {"ONCOTWIN_DATA_DIR": str(tmp_path / "var"), "FHIR_BASE_URL": fhir.base_url, "FHIR_BEARER_TOKEN": TOKEN}
        auditor = Auditor(load_settings(env))
        audit_id, work = auditor.start(searches=["gender=female"])
        drain(auditor, audit_id, work)
        women = {p["id"] for p in fhir.bulk.patients.values() if p.get("gender") == "female"}
        assert fhir.requests_to("/fhir/Patient")  # the search was made
    status = store.status(auditor.db, audit_id)
    assert women and status["inputs"] | {"total": 0} == {
        "total": 0,
        "pending": 0,
        "expanded": 1 + len(women),
        "error": 0,
        "cancelled": 0,
    }
    assert status["inputs"]["total"] == 1 + len(women) and status["state"] == store.FINISHED
    assert store.rows(auditor.db, audit_id) == []  # these patients' orders are all stopped or completed


def test_transient_failures_are_retried_then_written_as_errors(
    auditor: Auditor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.medical_necessity.audit import run

    audit_id, work = auditor.start([synthea("Micah_Schinner"), synthea("Whitney_Ortiz")])
    first, second = work.inputs
    orders = auditor.expand(audit_id, *first).orders

    def server_down(*_: object) -> None:
        raise UpstreamError("FHIR server did not answer in time", 504)

    def llm_down(*_: object) -> None:
        raise LLMUnavailable("no answer")

    monkeypatch.setattr(run, "read_input", server_down)
    monkeypatch.setattr(run, "assess", llm_down)
    with pytest.raises(UpstreamError):
        auditor.expand(audit_id, *second)  # not the last attempt: the task retries it
    with pytest.raises(LLMUnavailable):
        auditor.evaluate(audit_id, *orders[0].args(audit_id)[1:])
    assert store.status(auditor.db, audit_id)["orders"]["error"] == 0
    auditor.expand(audit_id, *second, final=True)
    for order in orders:
        assert auditor.evaluate(audit_id, *order.args(audit_id)[1:], final=True)
    rows = store.rows(auditor.db, audit_id)
    assert [r.state for r in rows] == [store.ERROR] * 3
    assert all("gave up after retries" in (r.error or "") for r in rows)
    assert store.status(auditor.db, audit_id)["state"] == store.FINISHED


def test_fhir_searches_need_a_server(auditor: Auditor) -> None:
    with pytest.raises(InvalidInput, match="FHIR_BASE_URL"):
        auditor.start(searches=["gender=female"])


def test_an_order_row_added_while_cancelling_is_cancelled_not_evaluated(auditor: Auditor) -> None:
    audit_id, work = auditor.start([synthea("Whitney_Ortiz")])
    found = auditor.expand(audit_id, *work.inputs[0])
    with auditor.db.begin() as session:  # the audit is cancelled; these rows escaped the cancel's UPDATE
        session.execute(update(store.Audit).where(store.Audit.id == audit_id).values(state=store.CANCELLED))
    assert not auditor.evaluate(audit_id, *found.orders[0].args(audit_id)[1:])
    row = {r.order_key: r for r in store.rows(auditor.db, audit_id)}[found.orders[0].order_key]
    assert (row.state, row.determination, row.error) == (store.CANCELLED, None, "cancelled")


def test_one_automatic_resume_per_quiet_window(auditor: Auditor) -> None:
    audit_id, _ = auditor.start([synthea("Whitney_Ortiz")])
    assert store.claim_resume(auditor.db, audit_id, 30)
    assert not store.claim_resume(auditor.db, audit_id, 30)  # a second worker connecting now
    assert store.claim_resume(auditor.db, audit_id, -1)  # once the window has passed
    store.cancel(auditor.db, audit_id)
    assert not store.claim_resume(auditor.db, audit_id, -1)  # only running audits


def test_only_audits_without_progress_for_the_quiet_time_count_as_stalled(auditor: Auditor) -> None:
    audit_id, work = auditor.start([synthea("Whitney_Ortiz")])
    assert store.stalled_audits(auditor.db, 60) == []  # just created
    past = time.time() - 120
    with auditor.db.begin() as session:
        session.execute(update(store.Audit).where(store.Audit.id == audit_id).values(created=past))
    assert store.stalled_audits(auditor.db, 60) == [audit_id]
    expanded = auditor.expand(audit_id, *work.inputs[0])  # progress: its order rows appear now
    assert expanded.orders and store.stalled_audits(auditor.db, 60) == []
    with auditor.db.begin() as session:
        session.execute(update(store.AuditOrder).where(store.AuditOrder.audit_id == audit_id).values(created=past))
    assert store.stalled_audits(auditor.db, 60) == [audit_id]
    assert store.claim_resume(auditor.db, audit_id, 60)
    assert store.stalled_audits(auditor.db, 60) == []  # a resume counts as progress for a while
    store.cancel(auditor.db, audit_id)
    assert store.stalled_audits(auditor.db, -1) == []  # only running audits


def test_links_inside_the_input_folder_are_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(synthea("Whitney_Ortiz"), outside / "secret.json")
    shutil.copy(synthea("Darin_Skiles"), root / "a" / "inside.json")
    (root / "a" / "escape").symlink_to(outside, target_is_directory=True)
    (root / "a" / "escape.json").symlink_to(outside / "secret.json")
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)  # would never end if followed
    refs = enumerate_paths(["a"], root)
    assert refs == [FILE + str((root / "a" / "inside.json").resolve())]


# -- the store on both dialects ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    base = {"ONCOTWIN_DATA_DIR": str(tmp_path / "var")}
    if request.param == "sqlite":
        yield load_settings(base)
        return
    why = servers_available()
    if why:
        pytest.skip(why)
    with postgres_database() as url:
        yield load_settings({**base, "DATABASE_URL": url})


def test_the_store_is_idempotent(db_settings: Settings) -> None:
    auditor = Auditor(db_settings)
    ref = FILE + "/data/x.json"
    audit_id = store.create_audit(auditor.db, [(key(ref), ref, "x.json")] * 2)
    order_key = key(ref, "p", "MedicationRequest/1", "0")
    row: dict[str, object] = {"order_key": order_key, "input": "x.json", "patient": "p"}
    row |= {"reference": "MedicationRequest/1", "occurrence": 0, "code": "1", "system": "s", "display": "d"}
    store.add_orders(auditor.db, audit_id, key(ref), [row])
    store.add_orders(auditor.db, audit_id, key(ref), [row])
    assert len(store.rows(auditor.db, audit_id)) == 1
    assert store.status(auditor.db, audit_id)["inputs"]["total"] == 1
    values = {"state": store.DONE, "determination": "meets", "confidence": 0.9}
    with auditor.rows.connect() as conn:
        assert auditor.rows.finish(conn, audit_id, order_key, values)
        assert not auditor.rows.finish(conn, audit_id, order_key, values | {"determination": "does-not-meet"})
    (only,) = store.rows(auditor.db, audit_id)
    assert (only.state, only.determination) == (store.DONE, "meets")
    assert store.get_audit(auditor.db, audit_id).state == store.FINISHED  # the last writer marked it
    assert not store.finish_if_complete(auditor.db, audit_id)


def test_an_audit_whose_last_writers_raced_is_finished_by_the_next_status_read(db_settings: Settings) -> None:
    auditor = Auditor(db_settings)
    ref = FILE + "/data/y.json"
    audit_id = store.create_audit(auditor.db, [(key(ref), ref, "y.json")])
    rows = [{"order_key": key(ref, str(n)), "input": "y.json", "reference": f"ServiceRequest/{n}"} for n in range(2)]
    store.add_orders(auditor.db, audit_id, key(ref), rows)
    with auditor.db.begin() as session:  # both rows written, as by two writers that each saw the other pending
        session.execute(
            update(store.AuditOrder).where(store.AuditOrder.audit_id == audit_id).values(state=store.DONE, finished=5.0)
        )
    assert store.get_audit(auditor.db, audit_id).state == store.RUNNING
    assert store.status(auditor.db, audit_id)["state"] == store.FINISHED
    assert store.get_audit(auditor.db, audit_id).finished == 5.0  # the time of the last row, not of the read


# -- reports ----------------------------------------------------------------------------------------------------


def test_reports_in_three_formats(auditor: Auditor, tmp_path: Path) -> None:
    shutil.copy(synthea("Micah_Schinner"), tmp_path / "a.json")
    (tmp_path / "b.json").write_text("=HYPERLINK(1)")  # unreadable, and a formula if opened naively
    audit_id, work = auditor.start([tmp_path], root=tmp_path)
    drain(auditor, audit_id, work)
    status, rows = store.status(auditor.db, audit_id), store.rows(auditor.db, audit_id)

    doc = json.loads(json.dumps(report_json(status, rows)))
    assert set(doc) == {"audit", "rows"}
    assert {"id", "started", "finished", "counts"} <= set(doc["audit"])
    assert doc["audit"]["counts"]["orders"] == len(doc["rows"]) == 3
    order_rows = [r for r in doc["rows"] if r["order"]]
    assert {r["input"] for r in doc["rows"]} == {"a.json", "b.json"}  # relative to the root: no server paths
    assert all({"patient", "order", "determination", "confidence", "error"} <= set(r) for r in doc["rows"])
    assert all(set(r["order"]) == {"reference", "code"} and r["determination"] for r in order_rows)
    assert [r["error"] is not None for r in doc["rows"]].count(True) == 1

    table = list(csv.DictReader(io.StringIO(report_csv(rows))))
    assert len(table) == 3
    assert {r["determination"] for r in table if r["order_reference"]} <= {
        "meets",
        "does-not-meet",
        "insufficient-documentation",
        "not-on-any-pathway",
    }

    html = report_html(status, rows)
    assert html.count("<svg") == 3  # by determination, by pathway, by drug
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # no external asset
    assert html.count("<script") == 1 and not re.search(r"<script[^>]*src", html)  # the inline filter only
    assert "Leucovorin" in html and "colon@" in html


# -- what a reviewer needs to act on a row, on both stores ------------------------------------------------

# One constructed patient per determination (the cases of tests/data/necessity_cases.yaml).
CASES = {
    "meets": ("nsclc", {"stage": "IVA", "markers": {"EGFR": "positive", "ALK": "negative"}}, "osimertinib"),
    "does-not-meet": (
        "nsclc",
        {"stage": "IVB", "markers": {"EGFR": "negative", "ALK": "negative", "PD-L1": 10.0}},
        "osimertinib",
    ),
    "insufficient-documentation": ("nsclc", {"stage": "IVA"}, "osimertinib"),
    "not-on-any-pathway": ("rectum", {"stage": "IIIB"}, "oxaliplatin"),
}


def case_records() -> list[PatientRecord]:
    records = []
    for expected, (cancer, facts, drug) in CASES.items():
        record = patient(cancer, **facts)  # type: ignore[arg-type]
        record.patient.id = expected
        record.orders.append(order_for(drug, on="2024-02-01", reference=f"MedicationRequest/{expected}"))
        records.append(record)
    return records


def audit_of_the_cases(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Auditor, str]:
    """An audit of one input holding the four constructed patients, run on the given store."""
    (tmp_path / "cases.json").write_text("{}")
    monkeypatch.setattr(run, "read_input", lambda ref, settings: case_records())
    auditor = Auditor(settings)
    audit_id, work = auditor.start([tmp_path / "cases.json"], root=tmp_path)
    drain(auditor, audit_id, work)
    return auditor, audit_id


@pytest.fixture
def determined(db_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Auditor, str]:
    """The audit of the cases on the store under test (SQLite and PostgreSQL)."""
    return audit_of_the_cases(db_settings, monkeypatch, tmp_path)


def test_a_row_of_each_determination_carries_what_a_reviewer_needs(determined: tuple[Auditor, str]) -> None:
    auditor, audit_id = determined
    rows = {r.patient: r for r in store.rows(Auditor(auditor.settings).db, audit_id)}  # as a restarted worker
    assert {p: r.determination for p, r in rows.items()} == {p: p for p in CASES}

    meets = rows["meets"]
    assert (meets.pathway, meets.details["option"]) == ("nsclc@2026.11", "nsclc.rx.osimertinib")
    assert meets.details["deciding"] == meets.details["missing"] == []
    assert {"criterion": "EGFR positive", "reference": "Observation/m0", "value": "positive", "date": "2024-01-10"} in (
        meets.details["evidence"]
    )
    assert meets.details["rationale"].startswith("osimertinib (MedicationRequest/meets) meets the Non-small cell")

    fails = rows["does-not-meet"]
    assert fails.pathway == "nsclc@2026.11" and "EGFR positive" in fails.details["deciding"]
    assert fails.details["missing"] == []
    assert ("EGFR positive", "Observation/m0") in {(e["criterion"], e["reference"]) for e in fails.details["evidence"]}
    assert {e["criterion"] for e in fails.details["evidence"]} <= set(fails.details["deciding"])  # deciding leaves only

    unknown = rows["insufficient-documentation"]
    assert unknown.pathway == "nsclc@2026.11" and unknown.details["option"] == "nsclc.rx.osimertinib"
    missing = unknown.details["missing"]
    assert "EGFR positive" in missing and "EGFR mutation result on record" in missing
    assert set(missing) == {d.removeprefix("not ") for d in unknown.details["deciding"]}  # the undocumented leaves
    assert "not documented: " in unknown.details["rationale"]

    nowhere = rows["not-on-any-pathway"]
    assert (nowhere.pathway, nowhere.details["option"], nowhere.needs_review) == (None, None, True)
    assert nowhere.details["deciding"] == nowhere.details["missing"] == nowhere.details["evidence"] == []
    assert "no pathway applies" in nowhere.details["rationale"]

    for row in rows.values():  # a redelivered order task writes nothing, the review fields included
        assert not auditor.evaluate(audit_id, row.order_key, FILE + "x", row.patient or "", row.reference or "", 0)
    again = {r.patient: (r.finished, r.detail) for r in store.rows(auditor.db, audit_id)}
    assert again == {p: (r.finished, r.detail) for p, r in rows.items()}


def test_the_reports_carry_the_review_fields(determined: tuple[Auditor, str]) -> None:
    auditor, audit_id = determined
    status, rows = store.status(auditor.db, audit_id), store.rows(auditor.db, audit_id)

    text = report_csv(rows)
    header, *_ = text.splitlines()
    assert header.split(",") == list(CSV_COLUMNS)
    assert {"pathway", "option", "deciding", "missing_facts", "rationale", "evidence"} <= set(CSV_COLUMNS)
    lines = {r["patient"]: r for r in csv.DictReader(io.StringIO(text))}
    unknown = lines["insufficient-documentation"]
    assert (unknown["order_reference"], unknown["code"], unknown["display"]) == (
        "MedicationRequest/insufficient-documentation",
        "1721560",
        "osimertinib",
    )
    assert (unknown["pathway"], unknown["option"]) == ("nsclc@2026.11", "nsclc.rx.osimertinib")
    assert "EGFR positive" in unknown["missing_facts"].split(LIST_SEPARATOR)
    assert unknown["deciding"] and unknown["rationale"].startswith("osimertinib (")
    assert "Observation/m0" in lines["does-not-meet"]["evidence"].split(LIST_SEPARATOR)
    assert lines["not-on-any-pathway"]["pathway"] == lines["not-on-any-pathway"]["evidence"] == ""

    doc = json.loads(json.dumps(report_json(status, rows)))
    assert doc["audit"]["counts"]["byPathway"] == {"nsclc@2026.11": 3, "none": 1}
    row = {r["patient"]: r for r in doc["rows"]}["does-not-meet"]
    assert {"pathway", "option", "deciding", "missingFacts", "rationale", "evidence", "needsReview"} <= set(row)
    assert row["order"] == {
        "reference": "MedicationRequest/does-not-meet",
        "code": {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1721560", "display": "osimertinib"},
    }
    assert row["pathway"] == "nsclc@2026.11" and "EGFR positive" in row["deciding"] and row["missingFacts"] == []
    assert any(e["reference"] == "Observation/m0" for e in row["evidence"])

    html = report_html(status, rows)
    for name in ("determination", "pathway", "drug"):
        assert f'<select name="{name}"><option value="">all</option>' in html
    assert '<option value="nsclc@2026.11">' in html and '<option value="not-on-any-pathway">' in html
    assert '<option value="osimertinib">' in html and '<option value="oxaliplatin">' in html
    assert "By pathway" in html and "By cancer" not in html and "rectum" not in html
    assert html.count("<details>") == 4
    unknown_row = next(r for r in html.split("<tr ") if "MedicationRequest/insufficient-documentation" in r)
    assert 'data-determination="insufficient-documentation" data-pathway="nsclc@2026.11"' in unknown_row
    assert "<dt>Missing facts</dt><dd><ul><li>EGFR positive</li>" in unknown_row
    for part in ("<dt>Deciding criteria</dt>", "<dt>Rationale</dt><dd>osimertinib (", "<dt>Evidence</dt>"):
        assert part in unknown_row
    assert "Observation/m0 (EGFR positive: negative, 2024-01-10)" in html  # the does-not-meet row's evidence


def test_the_html_filters_and_details_work_in_a_browser_under_the_report_policy(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.browser_harness import chromium, chromium_path

    if chromium_path() is None:
        pytest.skip("chromium is not installed (make browser)")
    from playwright.sync_api import expect, sync_playwright

    auditor, audit_id = audit_of_the_cases(settings, monkeypatch, tmp_path)  # the page does not depend on the store
    html = report_html(store.status(auditor.db, audit_id), store.rows(auditor.db, audit_id))
    headers = {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": HTML_CSP}
    with sync_playwright() as playwright, chromium(playwright) as browser:
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.route("http://audit.test/report", lambda route: route.fulfill(status=200, body=html, headers=headers))
        page.goto("http://audit.test/report")  # served as the API serves it, offline
        shown, count = page.locator("#orders tbody tr:visible"), page.locator("#shown")
        expect(count).to_have_text("4 of 4 rows shown")  # (expect waits for the page to catch up)
        expect(shown).to_have_count(4)
        page.select_option("select[name=pathway]", "nsclc@2026.11")
        expect(count).to_have_text("3 of 4 rows shown")
        page.select_option("select[name=determination]", "insufficient-documentation")
        expect(shown).to_have_count(1)
        expect(shown).to_contain_text("MedicationRequest/insufficient-documentation")
        page.select_option("select[name=drug]", "oxaliplatin")
        expect(shown).to_have_count(0)
        page.click("button[type=reset]")
        expect(count).to_have_text("4 of 4 rows shown")
        row = page.locator("tr[data-determination=insufficient-documentation]")
        expect(row.locator("dd").first).to_be_hidden()
        row.locator("summary").click()
        expect(row.locator("details")).to_have_attribute("open", "")
        expect(row.locator("dl")).to_contain_text("EGFR positive")
        assert problems == []  # no script error, no policy violation


def test_an_old_database_and_its_rows_still_report(db_settings: Settings) -> None:
    from sqlalchemy import inspect, text

    from shared.db import engine as db_engine
    from shared.db import sessions

    engine = db_engine(db_settings)  # the tables as this release creates them, then as the last one did
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE necessity_audit_orders DROP COLUMN detail"))
    db, order_rows = sessions(db_settings), store.OrderRows(db_settings)  # the last release's writes
    ref = FILE + "/data/old.json"
    audit_id = store.create_audit(db, [(key(ref), ref, "old.json")])
    old = {"order_key": key(ref, "1"), "input": "old.json", "patient": "p", "reference": "MedicationRequest/1"}
    new = old | {"order_key": key(ref, "2"), "reference": "MedicationRequest/2"}
    store.add_orders(db, audit_id, key(ref), [old, new])
    with order_rows.connect() as conn:
        values = {"state": store.DONE, "determination": "meets", "confidence": 0.95, "pathway": "nsclc@2026.11"}
        assert order_rows.finish(conn, audit_id, old["order_key"], values)

    auditor = Auditor(db_settings)  # this release starting on that database: the column is added once
    with engine.connect() as conn:
        assert "detail" in {c["name"] for c in inspect(conn).get_columns("necessity_audit_orders")}
    store.upgrade(engine)  # again: nothing to do
    detail = {"option": "nsclc.rx.osimertinib", "deciding": [], "missing": [], "rationale": "r", "evidence": []}
    with auditor.rows.connect() as conn:
        assert auditor.rows.finish(conn, audit_id, new["order_key"], values | {"detail": json.dumps(detail)})
    rows = store.rows(auditor.db, audit_id)
    assert [r.detail for r in rows] == [None, json.dumps(detail)]
    status = store.status(auditor.db, audit_id)

    first, second = report_json(status, rows)["rows"]
    assert (first["pathway"], first["option"], first["deciding"], first["missingFacts"]) == (
        "nsclc@2026.11",
        None,
        [],
        [],
    )
    assert (first["rationale"], first["evidence"]) == (None, [])
    assert (second["option"], second["rationale"]) == ("nsclc.rx.osimertinib", "r")
    assert report_json(status, rows)["audit"]["counts"]["byPathway"] == {"nsclc@2026.11": 2}
    line = next(csv.DictReader(io.StringIO(report_csv(rows))))
    assert (line["determination"], line["pathway"], line["deciding"], line["rationale"]) == (
        "meets",
        "nsclc@2026.11",
        "",
        "",
    )
    html = report_html(status, rows)
    assert "<dt>Rationale</dt><dd>not recorded</dd>" in html and html.count("<details>") == 2


def test_csv_cells_that_look_like_formulas_are_defused() -> None:
    row = store.AuditOrder(input="=cmd|' /C calc'!A0", patient="p", state=store.ERROR, error="@SUM(1)")
    (line,) = list(csv.DictReader(io.StringIO(report_csv([row]))))
    assert line["input"].startswith("'=") and line["error"] == "'@SUM(1)"


# -- HTTP ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ORDER_BUNDLES[:2]:
        shutil.copy(synthea(name), folder / f"{name}.json")
    (folder / "broken.json").write_text("{")
    return folder


@pytest.fixture
def api(tmp_path: Path, root: Path) -> tuple[FlaskClient, Callable[..., dict[str, str]]]:
    from oncotwin.app import create_app
    from services.medical_necessity.audit_app import ENQUEUE
    from shared.auth import LocalKeys

    settings = load_settings({"ONCOTWIN_DATA_DIR": str(tmp_path / "var"), "AUDIT_INPUT_ROOT": str(root)})
    app = create_app(settings)
    app.extensions[ENQUEUE] = lambda audit_id, work: drain(Auditor(settings), audit_id, work)  # the queue, inline
    keys = LocalKeys(settings.data_dir)
    keys.ensure()

    def headers(scopes: tuple[str, ...] = ("necessity.audit",), subject: str = "reviewer") -> dict[str, str]:
        token = keys.mint(subject, list(scopes), 600, issuer=settings.token_issuer, audience=settings.token_audience)
        return {"Authorization": f"Bearer {token}"}

    return app.test_client(), headers


def test_http_audit_lifecycle(api: tuple[FlaskClient, Callable[..., dict[str, str]]]) -> None:
    client, headers = api
    created = client.post("/necessity/v1/audits", json={"paths": ["."]}, headers=headers())
    assert created.status_code == 202, created.get_json()
    audit_id = created.get_json()["id"]
    assert created.headers["Location"].endswith(f"/necessity/v1/audits/{audit_id}")
    status = client.get(f"/necessity/v1/audits/{audit_id}", headers=headers()).get_json()
    assert status["state"] == "finished"
    assert status["orders"] | {"total": 5} == {"total": 5, "pending": 0, "done": 4, "error": 1, "cancelled": 0}
    assert status["throughputPerSecond"] > 0 and status["etaSeconds"] == 0
    report = client.get(f"/necessity/v1/audits/{audit_id}/report", headers=headers()).get_json()
    assert len(report["rows"]) == 5
    assert [r["input"] for r in report["rows"] if r["error"]] == ["broken.json"]
    csv_report = client.get(f"/necessity/v1/audits/{audit_id}/report?format=csv", headers=headers())
    assert csv_report.mimetype == "text/csv" and csv_report.get_data(as_text=True).count("\n") == 6
    html = client.get(f"/necessity/v1/audits/{audit_id}/report?format=html", headers=headers())
    assert html.mimetype == "text/html" and b"<svg" in html.data
    assert html.headers["Content-Security-Policy"] == HTML_CSP  # its own inline script and style, nothing else
    script = html.get_data(as_text=True).split("<script>")[1].split("</script>")[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in HTML_CSP and "default-src 'none'" in HTML_CSP
    assert client.post(f"/necessity/v1/audits/{audit_id}/cancel", headers=headers()).get_json()["state"] == "finished"
    assert client.post(f"/necessity/v1/audits/{audit_id}/resume", headers=headers()).status_code == 202


def test_http_refuses_what_it_must(api: tuple[FlaskClient, Callable[..., dict[str, str]]]) -> None:
    client, headers = api
    url = "/necessity/v1/audits"
    assert client.post(url, json={"paths": ["."]}).status_code == 401
    forbidden = client.post(url, json={"paths": ["."]}, headers=headers(("necessity.read",)))
    assert forbidden.status_code == 403
    bodies: list[object] = [{"paths": ["../"]}, {"paths": ["/etc"]}, {"paths": "."}, {"paths": [3]}, [], {}]
    for body in bodies:
        answer = client.post(url, json=body, headers=headers())
        assert answer.status_code == 400, body
        assert answer.get_json()["resourceType"] == "OperationOutcome"
    audit_id = client.post(url, json={"paths": ["broken.json"]}, headers=headers()).get_json()["id"]
    assert client.get(f"{url}/{audit_id}", headers=headers(subject="someone-else")).status_code == 404
    assert client.get(f"{url}/not-an-id", headers=headers()).status_code == 404
    assert client.get(f"{url}/{audit_id}/report?format=xml", headers=headers()).status_code == 400


def test_http_paths_are_off_without_a_root(tmp_path: Path, mint: Callable[..., str], settings: Settings) -> None:
    from oncotwin.app import create_app

    client = create_app(settings).test_client()
    answer = client.post(
        "/necessity/v1/audits",
        json={"paths": [str(FHIR)]},
        headers={"Authorization": f"Bearer {mint(['necessity.audit'])}"},
    )
    assert answer.status_code == 400
    assert "AUDIT_INPUT_ROOT" in answer.get_json()["issue"][0]["diagnostics"]
