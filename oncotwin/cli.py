"""``oncotwin`` command line: timelines from files, local tokens, and the embedded system."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from oncotwin.graph_commands import add_graph_parser
from shared.auth import SCOPES, LocalKeys
from shared.config import load_settings
from shared.errors import ConfigError, OncoTwinError


def _timeline(args: argparse.Namespace) -> int:
    from services.clinical_history.text import render_text
    from services.clinical_history.timeline import build_timeline
    from shared.fhir.ingest import load_path

    result = load_path(Path(args.path), strict=args.strict)
    patients = [result.record(args.patient)] if args.patient or len(result.records) == 1 else result.records
    timelines = [build_timeline(rec, include_notes=not args.no_notes) for rec in patients]
    if args.format == "json":
        payload = timelines[0].to_json() if len(timelines) == 1 else [t.to_json() for t in timelines]
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n\n".join(render_text(t) for t in timelines) + "\n")
    return 0


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

    return run_embedded(args.host, args.port, args.workers)


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

    tok = sub.add_parser("token", help="mint a bearer token signed by the local key (embedded default)")
    tok.add_argument("--subject", default="local-user")
    tok.add_argument("--scope", action="append", help=f"repeatable; default all: {', '.join(sorted(SCOPES))}")
    tok.add_argument("--ttl", type=int, default=8 * 3600, help="lifetime in seconds")
    tok.set_defaults(func=_token)

    up = sub.add_parser("up", help="start the embedded system on one port")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--workers", type=int, default=2)
    up.set_defaults(func=_up)

    add_graph_parser(sub)
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
