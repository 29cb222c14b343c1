"""Benchmark: batch necessity audit throughput on Celery (2 worker processes, Redis, PostgreSQL, LLM off).

The developer data holds 8 reviewable orders (in 4 Synthea bundles), so it is replicated into a
temporary folder until there are at least ``--orders`` (default 2,000) orders:

* ``--mode dense`` (default): each order-bearing bundle is copied with each of its reviewable
  orders repeated under new ids (``--per-bundle`` orders per copy, default 50), like a clinic
  export where a patient has many orders: the cost per order is evaluation, not ingestion.
* ``--mode files``: whole bundles copied as they are (2 orders per 0.7-2.7 MB file): the cost per
  order is dominated by ingesting the file (expand step plus one read per worker process).

A private ``redis-server`` on a free port and a fresh PostgreSQL database (dropped after) are used;
``--layout nodes`` (default, as deployed: one pool process per worker node, scaled by nodes) starts
2 workers with ``-c 1`` (prefork), so an input's orders, sent to the node that read it
(``worker_direct``), always find its record cached; ``--layout pool`` starts one worker with
``-c 2``, whose two pool processes share one node queue and so read each input twice. Printed: orders, inputs, wall
time from submission to the last row written, orders per second, p50/p95 of the time each order
task spent evaluating, mean worker time per task kind (from the worker log), p50 of
submission-to-written latency. No assertions; the goal
(at least 200 orders/s on the 2-core development machine) is printed beside the figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.medical_necessity import tasks  # noqa: E402
from services.medical_necessity.audit import store  # noqa: E402
from services.medical_necessity.audit.run import Auditor  # noqa: E402
from services.medical_necessity.engine import orders_to_review  # noqa: E402
from shared.fhir.ingest import load_path  # noqa: E402
from tests.celery_support import (  # noqa: E402
    CeleryWorker,
    RedisServer,
    postgres_database,
    server_env,
    servers_available,
    use_broker,
    wait_until,
)

SYNTHEA = ROOT.parent / "shared" / "data" / "fhir" / "synthea"
GOAL = 200.0


def order_bundles() -> list[tuple[Path, set[str]]]:
    """The Synthea bundles that hold reviewable orders, with those orders' resource ids."""
    found = []
    for path in sorted(SYNTHEA.glob("*.json")):
        refs = {o.reference for r in load_path(path).records for o in orders_to_review(r)}
        if refs:
            found.append((path, {ref.partition("/")[2] for ref in refs}))
    return found


def dense_copy(source: Path, order_ids: set[str], target: Path, per_bundle: int) -> int:
    bundle = json.loads(source.read_bytes())
    extra = []
    repeats = max(1, per_bundle // len(order_ids))
    for entry in bundle["entry"]:
        resource = entry.get("resource") or {}
        if resource.get("id") in order_ids:
            for n in range(1, repeats):
                clone = copy.deepcopy(entry)
                clone["resource"]["id"] = new_id = f"{resource['id']}-r{n}"
                clone["fullUrl"] = f"urn:uuid:{new_id}"
                clone.pop("request", None)
                extra.append(clone)
    bundle["entry"].extend(extra)
    target.write_text(json.dumps(bundle))
    return len(order_ids) * repeats


def build_batch(folder: Path, mode: str, orders: int, per_bundle: int) -> tuple[int, int]:
    """Replicate until ``orders``; returns (orders, inputs)."""
    sources = order_bundles()
    made, files, i = 0, 0, 0
    while made < orders:
        source, ids = sources[i % len(sources)]
        target = folder / f"{source.stem}-{i:05d}.json"
        if mode == "dense":
            made += dense_copy(source, ids, target, per_bundle)
        else:
            shutil.copyfile(source, target)
            made += len(ids)
        files += 1
        i += 1
    return made, files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--mode", choices=["dense", "files"], default="dense")
    parser.add_argument("--per-bundle", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--pool", choices=["prefork", "solo"], default="prefork")
    parser.add_argument("--layout", choices=["nodes", "pool"], default="nodes")
    args = parser.parse_args()
    why = servers_available()
    if why:
        print(f"audit throughput: skipped ({why})")
        return 0
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        base = Path(tmp)
        batch = base / "batch"
        batch.mkdir()
        started = time.perf_counter()
        expected, inputs = build_batch(batch, args.mode, args.orders, args.per_bundle)
        print(
            f"audit throughput ({args.mode}): {expected} orders in {inputs} bundles, replicated in "
            f"{time.perf_counter() - started:.1f} s"
        )
        if args.layout == "nodes":  # N worker nodes of one process each
            layout = [(args.pool, 1)] * args.concurrency
        else:  # one worker with N pool processes
            layout = [("prefork", args.concurrency)]
        rows, submitted = run_audit(batch, base, layout, "oncotwin_bench")
        report(rows, submitted, expected, args.concurrency)
    return 0


def run_audit(
    folder: Path, base: Path, layout: list[tuple[str, int]], database: str
) -> tuple[list[store.AuditOrder], float]:
    """An audit of ``folder`` on private Redis and PostgreSQL with one Celery worker per (pool, concurrency)
    of ``layout``; its rows and the submission time. Prints the mean worker time per task kind."""
    redis = RedisServer().start()
    try:
        with postgres_database(database) as database_url:
            env = server_env(redis.url, database_url, base / "var")
            settings = use_broker(env)
            auditor = Auditor(settings)
            workers = [
                CeleryWorker(env, base / "logs", pool=pool, concurrency=concurrency).start()
                for pool, concurrency in layout
            ]
            try:
                submitted = time.time()
                audit_id, _ = tasks.start(settings, [str(folder)])
                wait_until(
                    lambda: store.get_audit(auditor.db, audit_id).state != store.RUNNING,
                    3600,
                    "the audit",
                    interval=0.5,
                )
            finally:
                for worker in workers:
                    worker.stop()
            task_times("".join(w.log_tail(50_000_000) for w in workers))
            return store.rows(auditor.db, audit_id), submitted
    finally:
        redis.stop()


def task_times(log: str) -> None:
    """Mean run time per task kind as the worker logged it (evaluate + database + ingest on a miss)."""
    times: dict[str, list[float]] = {}
    for match in re.finditer(r"Task oncotwin\.necessity\.(\w+)\[[^\]]+\] succeeded in ([0-9.e-]+)s", log):
        times.setdefault(match.group(1), []).append(float(match.group(2)))
    for name, values in sorted(times.items()):
        print(
            f"  {name}: {len(values)} tasks, mean {1000 * statistics.fmean(values):.1f} ms, "
            f"total {sum(values):.1f} s of worker time"
        )


def report(rows: list[store.AuditOrder], submitted: float, expected: int, concurrency: int) -> None:
    done = [r for r in rows if r.state == store.DONE]
    last = max(r.finished or submitted for r in rows)
    wall = last - submitted
    work_ms = sorted(r.elapsed_ms or 0.0 for r in done)
    latency = sorted(((r.finished or 0) - submitted) * 1000 for r in done)
    print(f"  rows {len(rows)} (expected {expected}), done {len(done)}, errors {len(rows) - len(done)}")
    print(
        f"  wall {wall:.2f} s, {len(done) / wall:.0f} orders/s with {concurrency} worker processes "
        f"(goal >= {GOAL:.0f}/s: {'met' if len(done) / wall >= GOAL else 'not met'})"
    )
    print(
        f"  per-order task time p50 {statistics.median(work_ms):.1f} ms, "
        f"p95 {work_ms[int(0.95 * (len(work_ms) - 1))]:.1f} ms (evaluating: assess, or an ingest on a cache miss)"
    )
    print(f"  submission-to-written p50 {statistics.median(latency) / 1000:.2f} s")


if __name__ == "__main__":
    raise SystemExit(main())
