"""The conformance corpus (tests/conformance/cases): one FHIR shape per case, the exact fact read
and where it came from. Every case runs twice: as written, and with every meta.profile removed
(facts are recognised by what a resource says, never by its profile). See the corpus README."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from graph.facts import DISEASE_STATUS_CODES, NOT_DONE
from shared.fhir.ingest import load_bundle
from shared.fhir.record import FhirTime, PatientRecord
from shared.therapy_lines import EXCLUDED_STATUSES, lines_of_therapy

CASES = sorted((Path(__file__).parent / "conformance" / "cases").glob("*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _without_profiles(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _without_profiles(v) for k, v in value.items() if k != "meta"}
        meta = {k: v for k, v in (value.get("meta") or {}).items() if k != "profile"} if "meta" in value else {}
        if meta:
            out["meta"] = meta
        return out
    if isinstance(value, list):
        return [_without_profiles(v) for v in value]
    return value


def _record(bundle: dict[str, Any]) -> tuple[PatientRecord, list[Any]]:
    result = load_bundle(orjson.dumps(bundle))
    return result.record("p1"), result.issues


def _date(value: FhirTime | None, wanted: str) -> bool:
    return value is not None and value.text.startswith(str(wanted))


def _tnm(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    while len(text) > 1 and text[0] in "cpyrau" and text[1] not in "0123456789":
        text = text[1:]
    return text[:1].upper() + text[1:]


def _where(items: list[Any], spec: dict[str, Any], checks: dict[str, Callable[[Any, Any], bool]]) -> list[Any]:
    return [i for i in items if all(check(i, spec[k]) for k, check in checks.items() if k in spec)]


def _eq(attr: str) -> Callable[[Any, Any], bool]:
    return lambda item, wanted: getattr(item, attr) == wanted


STAGE_CHECKS = {
    "source": _eq("source"),
    "cancer": _eq("cancer_source"),
    "group": lambda s, w: s.stage == str(w),
    "system": _eq("system"),
    "kind": _eq("kind"),
    "t": lambda s, w: _tnm(s.t) == w,
    "n": lambda s, w: _tnm(s.n) == w,
    "m": lambda s, w: _tnm(s.m) == w,
    "date": lambda s, w: _date(s.date, w),
    "derived": lambda s, w: s.derived is w,
    "derived_from": lambda s, w: set(s.derived_from) == set(w),
}
BIOMARKER_CHECKS = {
    "name": _eq("name"),
    "source": _eq("source"),
    "status": _eq("status"),
    "value": lambda b, w: str(w).lower() in (b.value or "").lower(),
    "quantity": lambda b, w: b.quantity is not None and abs(b.quantity - float(w)) < 1e-9,
    "unit": _eq("unit"),
    "date": lambda b, w: _date(b.date, w),
    "cancer": _eq("cancer_source"),
    "derived": lambda b, w: b.derived is w,
}
MEDICATION_CHECKS = {
    "source": _eq("source"),
    "ingredients": lambda m, w: list(m.ingredients) == sorted(w),
    "class": _eq("drug_class"),
    "antineoplastic": lambda m, w: m.antineoplastic is w,
    "start": lambda m, w: _date(m.start, w),
    "kind": _eq("kind"),
    "from": lambda m, w: str(w) in m.identified_by,
}


def _all_sources(rec: PatientRecord) -> set[str]:
    """Every resource some fact of the record stands on (cancers, stages, results, drugs, ...)."""
    found = {c.source for c in rec.cancers} | {s for c in rec.cancers for s in c.merged_sources}
    found |= {s.source for s in rec.stages} | {s for st in rec.stages for s in st.derived_from}
    found |= {b.source for b in rec.biomarkers} | {p.source for p in rec.performance}
    found |= {d.source for d in rec.disease_status} | {f.source for f in rec.findings}
    found |= {m.source for m in rec.medications if m.antineoplastic and m.status not in EXCLUDED_STATUSES}
    found |= {p.source for p in rec.procedures if p.status not in NOT_DONE}
    found |= {o.reference for o in rec.orders} | {p.source for p in rec.pending}
    return found


def check(rec: PatientRecord, issues: list[Any], expectation: dict[str, Any]) -> None:
    ((what, spec),) = expectation.items()
    spec = spec or {}
    if what == "cancer":
        (cancer,) = [c for c in rec.cancers if spec["source"] in (c.source, *c.merged_sources)] or [None]
        assert cancer is not None, f"no cancer from {spec['source']}: {[c.source for c in rec.cancers]}"
        for key, attr in (("type", "cancer_type"), ("role", "role"), ("related_primary", "related_primary")):
            if key in spec:
                assert getattr(cancer, attr) == spec[key], (key, getattr(cancer, attr))
        if "histology" in spec:
            assert cancer.histology is not None and cancer.histology.code == str(spec["histology"]), cancer.histology
        if "histology_from" in spec:
            assert spec["histology_from"] in (cancer.histology_from or "") + " " + cancer.type_from, (
                cancer.histology_from,
                cancer.type_from,
            )
        if "body_site" in spec:
            assert cancer.body_site is not None and cancer.body_site.code == str(spec["body_site"])
    elif what == "no_cancer":
        assert spec["source"] not in {s for c in rec.cancers for s in (c.source, *c.merged_sources)}
    elif what == "stage":
        stages = [s for c in rec.cancers for s in c.stages] + [s for s in rec.stages if s.cancer_source is None]
        matches = _where(stages, {"system": "AJCC", **spec}, STAGE_CHECKS)
        assert matches, (
            f"no stage {spec}; have {[(s.stage, s.system, s.kind, s.t, s.n, s.m, s.source) for s in stages]}"
        )
    elif what == "risk_group":
        cancer = next(c for c in rec.cancers if c.source == spec["cancer"])
        risk = cancer.risk_group
        assert risk is not None and risk.group == spec["group"], risk
        if "derived_from" in spec:
            assert set(risk.derived_from) == set(spec["derived_from"]), risk.derived_from
    elif what == "no_stage":
        cancer = next(c for c in rec.cancers if c.source == spec["cancer"])
        groups = [s for s in cancer.stages if s.system == "AJCC" and s.stage]
        assert groups == [], groups
    elif what == "biomarker":
        matches = _where(rec.biomarkers, spec, BIOMARKER_CHECKS)
        have = [(b.name, b.status, b.value, b.quantity, b.source) for b in rec.biomarkers]
        assert matches, f"no biomarker {spec}; have {have}"
    elif what == "not_biomarker":
        assert spec["source"] not in {b.source for b in rec.biomarkers}
    elif what == "finding":
        checks = {"kind": _eq("kind"), "source": _eq("source"), "value": lambda f, w: str(w) in (f.value or "")}
        assert _where(rec.findings, spec, checks), f"no finding {spec}; have {rec.findings}"
    elif what == "performance":
        checks = {
            "scale": _eq("scale"),
            "value": _eq("value"),
            "source": _eq("source"),
            "date": lambda p, w: _date(p.date, w),
        }
        assert _where(rec.performance, spec, checks), f"no performance {spec}; have {rec.performance}"
    elif what == "disease_status":
        checks = {
            "status": lambda d, w: DISEASE_STATUS_CODES.get(d.code.code) == w,
            "source": _eq("source"),
            "date": lambda d, w: _date(d.date, w),
        }
        assert _where(rec.disease_status, spec, checks), f"no disease status {spec}; have {rec.disease_status}"
    elif what == "medication":
        have = [
            (m.source, m.ingredients, m.drug_class, m.antineoplastic, m.start, m.identified_by) for m in rec.medications
        ]
        assert _where(rec.medications, spec, MEDICATION_CHECKS), f"no medication {spec}; have {have}"
    elif what == "order":
        checks = {
            "reference": _eq("reference"),
            "ingredients": lambda o, w: list(o.ingredients) == sorted(w),
            "code": lambda o, w: o.code.code == str(w),
        }
        assert _where(rec.orders, spec, checks), f"no order {spec}; have {rec.orders}"
    elif what == "procedure":
        checks = {"source": _eq("source"), "category": _eq("category"), "start": lambda p, w: _date(p.start, w)}
        assert _where(rec.procedures, spec, checks), f"no procedure {spec}; have {rec.procedures}"
    elif what == "line":
        lines = lines_of_therapy(rec)
        checks = {
            "number": lambda line, w: line.line == w,
            "drugs": lambda line, w: line.drugs == sorted(w),
            "start": lambda line, w: _date(line.start, w),
            "cancer": lambda line, w: line.cancer_source == w,
        }
        have = [(line.line, line.drugs, line.start.text, line.cancer_source) for line in lines]
        assert _where(lines, spec, checks), f"no line {spec}; have {have}"
    elif what == "no_line":
        assert lines_of_therapy(rec) == []
    elif what == "absent":
        assert spec["source"] not in _all_sources(rec)
    elif what == "pending":
        assert spec["source"] in {p.source for p in rec.pending}, rec.pending
        assert spec["source"] not in {b.source for b in rec.biomarkers}
    elif what == "issue":
        found = [i for i in issues if (i.resource_id == spec.get("id") or "id" not in spec)]
        found = [i for i in found if spec.get("contains", "") in i.message]
        assert found, f"no issue {spec}; have {[(i.resource_id, i.message) for i in issues]}"
    elif what == "deceased":
        assert rec.patient.is_deceased is spec.get("value", True)
        if "date" in spec:
            assert _date(rec.patient.deceased, spec["date"])
    else:
        raise AssertionError(f"unknown assertion {what!r}")


def test_the_corpus_is_large_and_every_case_is_well_formed():
    assert len(CASES) >= 60
    for path in CASES:
        case = _load(path)
        assert {"shape", "what", "source", "bundle", "expect"} <= set(case), path.name
        assert case["expect"], path.name


@pytest.mark.parametrize("profiles", [True, False], ids=["as-sent", "no-profiles"])
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_case(path: Path, profiles: bool):
    case = _load(path)
    bundle = copy.deepcopy(case["bundle"]) if profiles else _without_profiles(case["bundle"])
    rec, issues = _record(bundle)
    for expectation in case["expect"]:
        check(rec, issues, expectation)
