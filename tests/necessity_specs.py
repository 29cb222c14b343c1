"""Medical-necessity cases as data -> (record, order): one reader for the hand-written case table
(tests/data/necessity_cases.yaml) and the evaluation set (tests/data/necessity_eval/*.yaml).

A record is a builder spec (``patient`` + ``given``/``procedures``/``status``/``notes``), a real
file (``file: synthea/NAME | mcode | twins/NAME``) or an inline FHIR Bundle (``bundle``); an
order is ``drug``, ``test`` (LOINC), ``service`` (any coded ServiceRequest) or ``reference``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson

from graph.conditions import parse_code
from shared.fhir.ingest import load_bundle, load_path
from shared.fhir.record import Order, PatientRecord
from tests.builders import disease_status, give, note, order_for, patient, procedure, service_request
from tests.conftest import MCODE, synthea

TWINS = Path(__file__).parent / "fixtures" / "twins"


@cache
def real_record(where: str) -> PatientRecord:
    kind, _, name = where.partition("/")
    path = {"synthea": lambda: synthea(name), "mcode": lambda: MCODE, "twins": lambda: TWINS / f"{name}.json"}[kind]()
    (record,) = [r for r in load_path(path).records if r.cancers]
    return record


def build_record(spec: dict[str, Any]) -> PatientRecord:
    if "file" in spec:
        return real_record(spec["file"])
    if "bundle" in spec:
        return load_bundle(orjson.dumps(spec["bundle"])).record("p1")
    args = dict(spec["patient"])
    cancer = args.pop("cancer")
    for name in ("born", "onset"):
        if name in args:
            args[name] = str(args[name])
    if "tnm" in args:
        args["tnm"] = tuple(args["tnm"])
    record = patient(cancer, **args)
    for given in spec.get("given", ()):
        give(record, *given["drugs"], on=str(given["date"]))
    for p in spec.get("procedures", ()):
        procedure(record, str(p["code"]), p["display"], p["category"], str(p["date"]))
    for s in spec.get("status", ()):
        disease_status(record, s["status"], str(s["date"]))
    for n in spec.get("notes", ()):
        note(record, n["text"], str(n["date"]))
    return record


def build_order(spec: dict[str, Any], record: PatientRecord) -> Order:
    if "reference" in spec:
        return next(o for o in record.orders if o.reference == spec["reference"])
    if "test" in spec:
        return service_request(str(spec["test"]["code"]), spec["test"]["display"], on=str(spec["date"]))
    if "service" in spec:
        code = parse_code({**spec["service"], "code": str(spec["service"]["code"])}, "order.service")
        return service_request(code.code, code.display or code.code, on=str(spec["date"]), system=code.system)
    return order_for(spec["drug"], on=str(spec["date"]))
