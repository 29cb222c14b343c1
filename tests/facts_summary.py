"""A compact, order-free summary of the facts ingestion reads from one record: what the
before/after comparison of the developer data (tests/test_fact_regression.py) compares.

Cancers, stages, biomarkers, performance, disease status, orders and lines one by one;
procedures and antineoplastic exposures as counts (there are thousands of them)."""

from __future__ import annotations

from collections import Counter

from shared.fhir.record import PatientRecord
from shared.therapy_lines import lines_of_therapy


def summarise(record: PatientRecord) -> list[str]:
    facts: list[list[object]] = []
    for c in record.cancers:
        facts.append(["cancer", c.source, c.cancer_type, c.role, c.related_primary])
        facts += [["stage", c.source, s.source, s.stage, s.kind, s.t, s.n, s.m] for s in c.stages]
        facts += [["biomarker", c.source, b.source, b.name, b.status, b.value, b.quantity] for b in c.biomarkers]
    facts += [["performance", p.source, p.scale, p.value] for p in record.performance]
    facts += [["disease_status", d.source, d.code.code, d.cancer_source] for d in record.disease_status]
    facts += [["order", o.reference, list(o.ingredients)] for o in record.orders]
    facts += [["line", x.cancer_source, x.line, x.drugs, x.start.text, x.exposures] for x in lines_of_therapy(record)]
    exposures = Counter((m.ingredients, m.drug_class) for m in record.medications if m.antineoplastic)
    facts += [["exposures", list(k[0]), k[1], n] for k, n in exposures.items()]
    procedures = Counter(p.category for p in record.procedures)
    facts += [["procedures", k, n] for k, n in procedures.items()]
    return sorted(repr(f) for f in facts)
