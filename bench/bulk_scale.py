"""Benchmark: Bulk Data exports of 10x and 100x the developer export, one patient at a time.

Exports are generated locally (nothing downloaded) by replicating ``../shared/data/fhir/synthea-bulk-10``,
plus the four Synthea patients with reviewable orders written as NDJSON (``seed_export``), with new UUIDs
per copy (``var/bench-bulk/xN``, kept between runs). For each size, each step runs in a
fresh process so its peak resident memory (``ru_maxrss``) is its own:

- ``index``: the one streaming pass over every line (``shared.fhir.bulk.BulkExport``);
- ``read``: one process reading and building the timeline of 8 patients spread over the export
  (time per patient, and the process's peak memory);
- ``whole``: the old way, for comparison, only where it fits (``load_path`` of the whole folder).

Then, with ``--audit N``: an audit of the N x export on Celery with 2 worker processes, Redis and
PostgreSQL (private servers, as ``bench/audit_throughput.py``): every order exactly once, throughput.
Bound stated: a patient read stays under ``BOUND_MB`` whatever the export size.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE = ROOT.parent / "shared" / "data" / "fhir" / "synthea-bulk-10"
URN = re.compile(r'"(urn:uuid:[0-9a-f-]{36})"')
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
BOUND_MB = 400
NAMESPACE = uuid.UUID("6f1c0f4e-4b8e-4a57-9a5b-3c2d1e0f0a11")


def seed_export(out: Path) -> tuple[Path, list[str]]:
    """The developer bulk export plus the Synthea patients that carry reviewable orders (their Bundles
    rewritten as NDJSON lines, ``urn:uuid:`` references made ``Type/id``): the export holds none of its
    own, and an audit without orders would measure nothing. Returns the folder and those patients."""
    from bench.audit_throughput import order_bundles

    if not (out / "done").exists():
        out.mkdir(parents=True, exist_ok=True)
        lines: dict[str, list[bytes]] = {p.name: [p.read_bytes()] for p in sorted(SOURCE.glob("*.ndjson"))}
        for bundle_path, _ in order_bundles():
            entries = json.loads(bundle_path.read_bytes())["entry"]
            urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries}
            for entry in entries:
                text = URN.sub(
                    lambda m, urls=urls: f'"{urls.get(m.group(1), m.group(1))}"',
                    json.dumps(entry["resource"], separators=(",", ":")),
                )
                lines.setdefault(f"{entry['resource']['resourceType']}.000.ndjson", []).append(text.encode() + b"\n")
        for name, chunks in lines.items():
            (out / name).write_bytes(b"".join(chunks))
        (out / "done").touch()
    patients = [
        json.loads(line)["id"] for line in (out / "Patient.000.ndjson").read_text().splitlines() if line.strip()
    ]
    return out, patients


def replicate(copies: int, out: Path, seed: Path) -> Path:
    """``copies`` copies of the seed export, each with its own ids (UUIDs mapped per copy)."""
    if (out / "done").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for source in sorted(seed.glob("*.ndjson")):
        data = source.read_bytes()
        with (out / source.name).open("wb") as handle:
            for k in range(copies):
                memo: dict[bytes, bytes] = {}

                def new_id(match: re.Match[bytes], k: int = k, memo: dict[bytes, bytes] = memo) -> bytes:
                    old = match.group(0)
                    if old not in memo:
                        memo[old] = str(uuid.uuid5(NAMESPACE, f"{k}:{old.decode()}")).encode()
                    return memo[old]

                handle.write(data if k == 0 else UUID.sub(new_id, data))
    (out / "done").touch()
    return out


PEAK = (
    "\nimport resource as _r\n"
    "RESULT['peak_mb'] = round(_r.getrusage(_r.RUSAGE_SELF).ru_maxrss / 1024, 1)\n"
    "print(json.dumps(RESULT))"
)


def measured(code: str, *args: str) -> dict:
    """Run ``code`` (it sets RESULT) in a fresh interpreter: its result plus its own peak RSS in MiB."""
    run = subprocess.run([sys.executable, "-c", code + PEAK, *args], capture_output=True, text=True, cwd=ROOT)
    if run.returncode:
        raise SystemExit(run.stderr[-2000:])
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


INDEX = """
import json, sys, time
from shared.fhir.bulk import BulkExport
t = time.perf_counter(); b = BulkExport(sys.argv[1], sys.argv[2])
RESULT = {"seconds": round(time.perf_counter() - t, 2), "patients": len(b.patients())}
"""
READ = """
import json, sys, time
from services.clinical_history.timeline import build_timeline
from shared.fhir.bulk import BulkExport
b = BulkExport(sys.argv[1], sys.argv[2])
picks = sys.argv[3].split(",")  # the same patients (copy 0 keeps the original ids) at every size
build_timeline(b.load(picks[0]).record(picks[0]))  # imports, tables: warm
t = time.perf_counter()
for p in picks:
    build_timeline(b.load(p).record(p))
RESULT = {"ms_per_patient": round(1000 * (time.perf_counter() - t) / len(picks), 1), "patients": len(picks)}
"""
WHOLE = """
import json, sys, time
from shared.fhir.ingest import load_path
t = time.perf_counter(); r = load_path(sys.argv[1])
RESULT = {"seconds": round(time.perf_counter() - t, 2), "patients": len(r.records)}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--whole-up-to", type=int, default=10, help="also read whole exports up to this size")
    parser.add_argument("--audit", type=int, default=0, help="audit the N x export with 2 workers (0: no audit)")
    args = parser.parse_args()
    base = ROOT / "var" / "bench-bulk"
    seed, originals = seed_export(base / "seed")
    rows = []
    for size in args.sizes:
        started = time.perf_counter()
        folder = replicate(size, base / f"x{size}", seed)
        mb = sum(p.stat().st_size for p in folder.glob("*.ndjson")) / 2**20
        generated = time.perf_counter() - started
        with tempfile.TemporaryDirectory(prefix="bulk-index-") as index:
            built = measured(INDEX, str(folder), index)
            read = measured(READ, str(folder), index, ",".join(originals))
        row = {
            "size": f"{size}x",
            "export_mb": round(mb),
            "generated_s": round(generated, 1),
            "index": built,
            "read": read,
        }
        if size <= args.whole_up_to:
            row["whole"] = measured(WHOLE, str(folder))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nbound: one patient's read under {BOUND_MB} MB whatever the export size")
    print("| export | MB | patients | index s | index peak MB | ms / patient | read peak MB | whole-export read |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        whole = row.get("whole")
        whole_text = f"{whole['seconds']} s, {whole['peak_mb']} MB" if whole else "not run"
        print(
            f"| {row['size']} | {row['export_mb']} | {row['index']['patients']} | {row['index']['seconds']} "
            f"| {row['index']['peak_mb']} | {row['read']['ms_per_patient']} | {row['read']['peak_mb']} | {whole_text} |"
        )
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        ratio = last["read"]["ms_per_patient"] / first["read"]["ms_per_patient"]
        print(f"time per patient {last['size']} / {first['size']}: {ratio:.2f}")
        over = [r["size"] for r in rows if (r["read"]["peak_mb"] or 0) > BOUND_MB]
        print(f"peak read memory under {BOUND_MB} MB: {'yes' if not over else 'no: ' + ', '.join(over)}")
    if args.audit:
        audit(replicate(args.audit, base / f"x{args.audit}", seed), seed, args.audit)
    return 0


def audit(folder: Path, seed: Path, copies: int) -> None:
    from bench.audit_throughput import report, run_audit
    from services.medical_necessity.engine import orders_to_review
    from shared.fhir.bulk import BulkExport
    from tests.celery_support import servers_available

    why = servers_available()
    if why:
        print(f"audit: skipped ({why})")
        return
    with tempfile.TemporaryDirectory(prefix="bulk-audit-") as tmp:
        base = Path(tmp)
        one = BulkExport(seed, base / "count-index")  # the orders of one copy, times the copies
        expected = copies * sum(len(orders_to_review(one.load(p).record(p))) for p in one.patients())
        patients = len(BulkExport(folder, base / "count-index").patients())
        print(f"\naudit of {folder.name}: {patients} patients, {expected} reviewable orders")
        rows, submitted = run_audit(folder, base, [("prefork", 1), ("prefork", 1)], "oncotwin_bulk_bench")
        distinct = {(r.input_key, r.reference, r.occurrence) for r in rows}
        print(f"  {len(rows)} rows, {len(distinct)} distinct (input, order) pairs: every order exactly once")
        report(rows, submitted, expected, 2)


if __name__ == "__main__":
    raise SystemExit(main())
