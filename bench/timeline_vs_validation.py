"""Benchmark: full timeline vs. fhir.resources validation of the whole bundle, in one run.

For the largest bundle in ../shared/data/fhir/synthea: median wall time of (read + ingest +
timeline) and of ``fhir.resources.R4B.bundle.Bundle.model_validate_json`` on the same bytes,
their ratio (goal: timeline >= 3x faster), and the peak Python memory of each (tracemalloc).
Both paths are warmed up once first so that one-off imports and model building are not counted.
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from fhir.resources.R4B.bundle import Bundle

from services.clinical_history.timeline import build_timeline
from shared.fhir.ingest import load_bundle

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT.parent / "shared" / "data" / "fhir" / "synthea"
REPEATS = 7


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(median seconds, peak MiB of Python allocations) over REPEATS runs."""
    fn()  # warm-up
    times = []
    for _ in range(REPEATS):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak / 2**20


def main() -> int:
    bundles = sorted(SYNTHEA.glob("*.json"), key=lambda p: p.stat().st_size)
    if not bundles:
        print(f"no bundles in {SYNTHEA}", file=sys.stderr)
        return 1
    path = bundles[-1]
    data = path.read_bytes()

    def timeline() -> object:
        return build_timeline(load_bundle(data).records[0]).to_json()

    def validate() -> object:
        return Bundle.model_validate_json(data)

    t_time, t_peak = measure(timeline)
    v_time, v_peak = measure(validate)
    events = len(build_timeline(load_bundle(data).records[0]).events)
    print(f"bundle: {path.name} ({len(data) / 2**20:.2f} MiB, {events} timeline events)")
    print(f"full timeline (ingest + timeline + JSON): median {t_time * 1000:8.1f} ms   peak {t_peak:6.1f} MiB")
    print(f"Bundle.model_validate_json (R4B):         median {v_time * 1000:8.1f} ms   peak {v_peak:6.1f} MiB")
    print(f"ratio validation / timeline: {v_time / t_time:.1f}x (goal >= 3x)")
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
