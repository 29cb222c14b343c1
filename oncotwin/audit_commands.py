"""``oncotwin audit PATH...``: a batch necessity audit on the Celery workers, with a progress bar.

Without ``--wait`` the command queues the audit and prints its id. With ``--wait`` it follows the
audit (progress on stderr) and writes the report (``--out`` or stdout). If no worker answers a
ping (the embedded SQLite broker cannot be pinged at all), ``--wait`` starts one worker process
for the ``necessity`` queue for the length of the run and stops it after; an audit left unfinished
is resumed by the next worker that starts (or ``oncotwin audit --resume ID --wait``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from services.medical_necessity.audit.report import FORMATS, render

POLL_S = 0.5
BAR = 30


def add_audit_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="batch necessity audit of every draft/active order in files or folders")
    audit.add_argument("paths", nargs="*", metavar="PATH", help="Bundle/NDJSON files or folders (Bulk Data exports)")
    audit.add_argument(
        "--fhir-search", action="append", default=[], help="a Patient search on FHIR_BASE_URL, e.g. name=x"
    )
    audit.add_argument("--out", type=Path, help="write the report here (default stdout)")
    audit.add_argument("--format", choices=FORMATS, default="json")
    audit.add_argument("--wait", action="store_true", help="follow the audit to the end and write its report")
    audit.add_argument("--resume", metavar="ID", help="re-enqueue what is pending of audit ID instead of starting one")
    audit.add_argument("--worker-concurrency", type=int, default=2, help="processes of a worker started by --wait")
    audit.add_argument("--stall-seconds", type=float, default=60.0, help="--wait resumes an audit idle this long")
    audit.set_defaults(func=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    from services.medical_necessity import tasks
    from services.medical_necessity.audit import store
    from services.medical_necessity.audit.run import Auditor
    from shared.celery_app import configure
    from shared.config import load_settings
    from shared.errors import InvalidInput

    settings = load_settings()
    configure(settings)
    if args.resume:
        audit_id = args.resume
        work = tasks.resume(settings, audit_id)
        print(f"audit {audit_id}: {len(work.inputs)} inputs, {len(work.orders)} orders re-enqueued", file=sys.stderr)
    else:
        if not args.paths and not args.fhir_search:
            raise InvalidInput("name at least one PATH or --fhir-search")
        audit_id, inputs = tasks.start(settings, args.paths, args.fhir_search)
        print(f"audit {audit_id}: {len(inputs)} inputs queued", file=sys.stderr)
    if not args.wait:
        print(audit_id)
        return 0
    db = Auditor(settings).db
    with _worker(args.worker_concurrency):
        _follow(db, audit_id, args.stall_seconds, lambda: tasks.resume(settings, audit_id), sys.stderr)
    status = store.status(db, audit_id)
    body, _ = render(args.format, status, store.rows(db, audit_id))
    if args.out:
        args.out.write_text(body, encoding="utf-8")
        print(f"report written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(body if body.endswith("\n") else body + "\n")
    return 0 if status["state"] == store.FINISHED else 1


def _workers_answer() -> bool:
    from shared.celery_app import celery_app

    try:
        return bool(celery_app.control.ping(timeout=1.0))
    except Exception:  # transports without broadcast (the SQLite broker) cannot be pinged
        return False


@contextmanager
def _worker(concurrency: int) -> Any:
    """A worker for the necessity queue while the block runs, unless one already answers."""
    if _workers_answer():
        yield
        return
    command = [sys.executable, "-m", "celery", "-A", "shared.celery_app:celery_app", "worker"]
    command += ["-Q", "necessity", "-c", str(concurrency), "--loglevel", "WARNING", "-n", f"audit-cli-{os.getpid()}@%h"]
    # stdout is the report's; the worker's banner goes nowhere, its warnings and errors to stderr
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # noqa: S603 (our own interpreter, fixed args)
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _follow(db: Any, audit_id: str, stall_s: float, resume: Any, out: TextIO) -> None:
    """Poll the audit until it is no longer running, drawing a progress bar; resume it if it stalls."""
    from services.medical_necessity.audit import store

    last_done, last_change = -1, time.monotonic()
    while True:
        status = store.status(db, audit_id)
        orders, inputs = status["orders"], status["inputs"]
        done = orders["done"] + orders["error"] + orders["cancelled"]
        out.write("\r" + progress_line(status))
        out.flush()
        if status["state"] != store.RUNNING:
            out.write("\n")
            return
        progressed = done + inputs["expanded"] + inputs["error"]
        if progressed != last_done:
            last_done, last_change = progressed, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            resume()  # e.g. the broker lost its queue: put the pending work back
            last_change = time.monotonic()
        time.sleep(POLL_S)


def progress_line(status: dict[str, Any]) -> str:
    orders, inputs = status["orders"], status["inputs"]
    done = orders["done"] + orders["error"] + orders["cancelled"]
    total = max(orders["total"], 1)
    filled = round(BAR * done / total) if orders["total"] else 0
    eta = status["etaSeconds"]
    eta_text = f" ETA {eta:.0f}s" if eta is not None and status["state"] == "running" else ""
    read = inputs["expanded"] + inputs["error"]
    return (
        f"[{'#' * filled}{'-' * (BAR - filled)}] {done}/{orders['total']} orders, "
        f"{read}/{inputs['total']} inputs read, {status['throughputPerSecond']:.1f}/s{eta_text}  "
    )
