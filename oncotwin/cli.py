"""``oncotwin`` command line: timelines, navigation and necessity from files, local tokens, the embedded system."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oncotwin.audit_commands import add_audit_parser
from oncotwin.graph_commands import add_graph_parser
from oncotwin.radiology_commands import add_radiology_parser
from shared.auth import SCOPES, LocalKeys
from shared.config import load_settings
from shared.errors import ConfigError, OncoTwinError

if TYPE_CHECKING:
    from graph.queries import PathwayQueries
    from shared.fhir.record import PatientRecord


def _timeline(args: argparse.Namespace) -> int:
    from services.clinical_history.text import render_text
    from services.clinical_history.timeline import build_timeline

    timelines = [build_timeline(rec, include_notes=not args.no_notes) for rec in _records(args)]
    if args.format == "json":
        payload = timelines[0].to_json() if len(timelines) == 1 else [t.to_json() for t in timelines]
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n\n".join(render_text(t) for t in timelines) + "\n")
    return 0


def _records(args: argparse.Namespace) -> list[PatientRecord]:
    """The patients of PATH a command is asked about: --patient, the only one, or all of them.
    One patient of a Bulk Data export is read alone (``shared.fhir.bulk``), never the whole export."""
    from shared.fhir.bulk import BulkExport, is_bulk_export
    from shared.fhir.ingest import load_path

    path = Path(args.path)
    if args.patient and is_bulk_export(path):
        export = BulkExport(path, load_settings().bulk_index_dir)
        try:
            return [export.load(args.patient, strict=args.strict).record(args.patient)]
        finally:
            export.close()
    result = load_path(path, strict=args.strict)
    if args.patient or len(result.records) == 1:
        return [result.record(args.patient)]
    return result.records


def _emit(outputs: Sequence[Any], text: Callable[[Any], str], fmt: str) -> None:
    if fmt == "json":
        payload = outputs[0].to_json() if len(outputs) == 1 else [o.to_json() for o in outputs]
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n\n".join(text(o) for o in outputs) + "\n")


def _queries() -> PathwayQueries:
    from graph import open_store
    from graph.queries import PathwayQueries

    return PathwayQueries(open_store(load_settings()))


def _navigate(args: argparse.Namespace) -> int:
    from services.care_navigation.engine import navigate
    from services.care_navigation.text import render_text

    queries = _queries()
    _emit([navigate(rec, queries, args.as_of) for rec in _records(args)], render_text, args.format)
    return 0


def _necessity(args: argparse.Namespace) -> int:
    from services.medical_necessity.engine import assess, orders_to_review
    from services.medical_necessity.judge import LLMJury, NoJudge
    from services.medical_necessity.text import render_text
    from shared.llm import LLMClient

    records = _records(args)
    if args.order and len(records) > 1:  # several patients, no --patient: the one whose order it is
        records = [r for r in records if any(o.reference == args.order for o in r.orders)] or records[:1]
    queries = _queries()
    client = LLMClient.from_settings(load_settings())
    judge = LLMJury(client) if client is not None else NoJudge()
    outputs = [assess(rec, queries, orders_to_review(rec, args.order), judge) for rec in records]
    _emit(outputs, render_text, args.format)
    return 0


def _date(value: str) -> date:
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {value!r}") from None


def _token(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.local_keys:
        raise ConfigError("tokens are minted by your identity provider when AUTH_JWKS_URL/AUTH_JWKS_FILE is set")
    scopes = args.scope or sorted(SCOPES)
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ConfigError(f"unknown scope(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(SCOPES))}")
    keys = LocalKeys(settings.data_dir)
    keys.ensure()
    print(keys.mint(args.subject, scopes, args.ttl, issuer=settings.token_issuer, audience=settings.token_audience))
    return 0


def _up(args: argparse.Namespace) -> int:
    from oncotwin.up import run_embedded

    return run_embedded(args.host, args.port, args.workers, args.task_workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oncotwin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tl = sub.add_parser("timeline", help="print a patient's cancer-care timeline")
    tl.add_argument("path", help="a FHIR Bundle/resource JSON file, an NDJSON file, or a folder (Bulk Data export)")
    tl.add_argument("--patient", help="patient id (when the input holds several)")
    tl.add_argument("--format", choices=["json", "text"], default="text")
    tl.add_argument("--strict", action="store_true", help="reject the input if any resource is invalid")
    tl.add_argument("--no-notes", action="store_true", help="skip free-text note extraction")
    tl.set_defaults(func=_timeline)

    nav = sub.add_parser("navigate", help="where a patient stands on the care pathways: next steps, gaps")
    nav.add_argument("path", help="a FHIR Bundle/resource JSON file, an NDJSON file, or a folder (Bulk Data export)")
    nav.add_argument("--patient", help="patient id (when the input holds several)")
    nav.add_argument("--as-of", type=_date, help="evaluate as of this date (YYYY-MM-DD); default today")
    nav.add_argument("--format", choices=["json", "text"], default="text")
    nav.add_argument("--strict", action="store_true", help="reject the input if any resource is invalid")
    nav.set_defaults(func=_navigate)

    nec = sub.add_parser("necessity", help="medical-necessity review of draft/active oncology orders")
    nec.add_argument("path", help="a FHIR Bundle/resource JSON file, an NDJSON file, or a folder (Bulk Data export)")
    nec.add_argument("--patient", help="patient id (when the input holds several)")
    nec.add_argument("--order", help="one order, MedicationRequest/<id> or ServiceRequest/<id>; default all")
    nec.add_argument("--format", choices=["json", "text"], default="text")
    nec.add_argument("--strict", action="store_true", help="reject the input if any resource is invalid")
    nec.set_defaults(func=_necessity)

    tok = sub.add_parser("token", help="mint a bearer token signed by the local key (embedded default)")
    tok.add_argument("--subject", default="local-user")
    tok.add_argument("--scope", action="append", help=f"repeatable; default all: {', '.join(sorted(SCOPES))}")
    tok.add_argument("--ttl", type=int, default=8 * 3600, help="lifetime in seconds")
    tok.set_defaults(func=_token)

    up = sub.add_parser("up", help="start the embedded system on one port")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--workers", type=int, default=2)
    up.add_argument(
        "--task-workers", type=int, default=2, help="Celery worker processes for queued work (0: start none)"
    )
    up.set_defaults(func=_up)

    add_graph_parser(sub)
    add_radiology_parser(sub)
    add_audit_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"oncotwin: configuration error: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    except OncoTwinError as exc:
        print(f"oncotwin: {exc.message}", file=sys.stderr)
        for problem in exc.problems[:20]:
            where = f" at {problem.expression}" if problem.expression else ""
            print(f"  - {problem.diagnostics}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
