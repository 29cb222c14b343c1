"""Benchmark: care-pathway queries on the embedded NetworkX store.

Prints the store's load time (parse + validate-free build from graph/pathways/*.yaml) and the
median time of ``locate`` + ``next_steps`` for one patient (goal: under 1 ms), for a constructed
metastatic NSCLC record and for real patients from ../shared/data (when present). The patient's
record is built once (ingestion is benchmarked elsewhere); each query run starts from scratch
(no cached facts between runs).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the record builders live with the tests

from graph.networkx_store import NetworkXPathwayStore  # noqa: E402
from graph.queries import PathwayQueries  # noqa: E402
from shared.fhir.ingest import load_path  # noqa: E402
from shared.fhir.record import PatientRecord  # noqa: E402
from tests.builders import give, patient  # noqa: E402

FHIR = ROOT.parent / "shared" / "data" / "fhir"
RUNS = 2000


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    loads = []
    for _ in range(5):
        start = time.perf_counter()
        store = NetworkXPathwayStore.load()
        loads.append(time.perf_counter() - start)
    nodes = sum(len(store.pathway(i.key).nodes) for i in store.pathways())
    load_ms = statistics.median(loads) * 1000
    print(f"NetworkX store load: median {load_ms:.1f} ms ({len(store.pathways())} pathways, {nodes} nodes)")

    queries = PathwayQueries(store)

    def run(record: PatientRecord) -> Callable[[], object]:
        def once() -> object:
            return [queries.next_steps_for(loc) for loc in queries.locate(record)]

        return once

    constructed = give(patient("nsclc", stage="IV", markers={"EGFR": "positive"}), "osimertinib", on="2024-02-01")
    cases: list[tuple[str, PatientRecord]] = [("constructed EGFR+ stage IV NSCLC", constructed)]
    real = (("Austin (Synthea, NSCLC)", FHIR / "synthea"), ("mCODE example (NSCLC IIIC)", FHIR / "mcode-stu1-examples"))
    for label, path in real:
        if path.exists():
            target = next(path.glob("Austin_*.json")) if path.name == "synthea" else path
            cases.append((label, next(r for r in load_path(target).records if r.cancers)))
    bulk = FHIR / "synthea-bulk-10"
    if bulk.exists():
        largest = max((r for r in load_path(bulk).records if r.cancers), key=lambda r: len(r.medications))
        cases.append((f"bulk patient with {len(largest.medications)} medication events", largest))
    for label, record in cases:
        ms = median_ms(run(record), RUNS)
        verdict = "meets" if ms < 1 else "misses"
        print(f"locate + next_steps, {label}: median {ms:.3f} ms over {RUNS} runs ({verdict} the 1 ms goal)")


if __name__ == "__main__":
    main()
