"""``oncotwin graph validate|export|load``: the pathway graph's command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from graph.loader import PATHWAY_DIR, PathwayFileError, load_pathways
from graph.model import Pathway
from shared.config import load_settings
from shared.errors import ConfigError


def _pathways(args: argparse.Namespace) -> list[Pathway]:
    try:
        return load_pathways(Path(args.dir))
    except PathwayFileError as exc:
        raise ConfigError(f"pathway file: {exc}") from None


def _validate(args: argparse.Namespace) -> int:
    from graph.validate import main as validate_main

    return validate_main([args.dir])


def _export(args: argparse.Namespace) -> int:
    from graph import export

    pathways = _pathways(args)
    if args.pathway:
        pathways = [p for p in pathways if args.pathway in (p.info.id, p.key)]
        if not pathways:
            raise ConfigError(f"no pathway {args.pathway!r} in {args.dir}")
    for pathway in pathways:
        if args.format == "json":
            sys.stdout.write(json.dumps(export.to_json(pathway), indent=2) + "\n")
        elif args.format == "plandefinition":
            from graph.plandefinition import to_plan_definition

            sys.stdout.write(json.dumps(to_plan_definition(pathway), indent=2) + "\n")
        elif args.format == "dot":
            sys.stdout.write(export.to_dot(pathway))
        else:
            sys.stdout.write(export.to_mermaid(pathway))
    return 0


def _import(args: argparse.Namespace) -> int:
    """A PlanDefinition (ours or anyone's) -> a pathway file on stdout; what did not map -> stderr."""
    from graph import export
    from graph.plandefinition import PlanDefinitionError, from_plan_definition

    try:
        resource = json.loads(Path(args.file).read_text(encoding="utf-8"))
        result = from_plan_definition(resource)
    except (OSError, ValueError, PlanDefinitionError) as exc:
        raise ConfigError(f"cannot import {args.file}: {exc}") from None
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sys.stdout.write(json.dumps(export.to_json(result.pathway), indent=2) + "\n")
    return 0


def _load(args: argparse.Namespace) -> int:
    from graph.neo4j_store import Neo4jPathwayStore
    from graph.validate import validate

    settings = load_settings()  # NEO4J_PASSWORD and friends come from the environment, never argv
    uri = args.neo4j_uri or settings.neo4j_uri
    if not uri:
        raise ConfigError("give --neo4j-uri or set NEO4J_URI")
    if not settings.neo4j_password:
        raise ConfigError("set NEO4J_PASSWORD (the password is never taken from the command line)")
    pathways = _pathways(args)
    errors = [f for f in validate(pathways) if f.severity == "error"]
    if errors:
        for finding in errors:
            print(finding, file=sys.stderr)
        raise ConfigError(f"{len(errors)} validation error(s): nothing loaded")
    store = Neo4jPathwayStore.connect(
        uri,
        args.user or settings.neo4j_user,
        settings.neo4j_password,
        database=args.database or settings.neo4j_database,
        namespace=args.namespace or settings.neo4j_namespace,
        timeout_s=settings.neo4j_timeout_s,
    )
    try:
        store.ensure_schema()
        store.write_pathways(pathways)
        loaded = sorted(i.key for i in store.pathways())
    finally:
        store.close()
    print(f"loaded {len(pathways)} pathway version(s); the store now holds: {', '.join(loaded)}")
    return 0


def add_graph_parser(sub: argparse._SubParsersAction) -> None:
    graph = sub.add_parser("graph", help="validate, export or load the care-pathway graph")
    commands = graph.add_subparsers(dest="graph_command", required=True)

    def with_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--dir", default=str(PATHWAY_DIR), help="folder of pathway files (*.yaml)")
        return parser

    validate = with_dir(commands.add_parser("validate", help="check pathway files; exit 1 on any error"))
    validate.set_defaults(func=_validate)

    export = with_dir(commands.add_parser("export", help="print pathways for people or other systems"))
    export.add_argument("--format", choices=["json", "dot", "mermaid", "plandefinition"], default="json")
    export.add_argument("--pathway", help="a pathway id (newest version) or id@version")
    export.set_defaults(func=_export)

    imp = commands.add_parser("import", help="a FHIR PlanDefinition -> a pathway file (JSON, loadable as YAML)")
    imp.add_argument("file", help="PlanDefinition JSON; conditions we cannot map are kept as 'needs mapping'")
    imp.set_defaults(func=_import)

    load = with_dir(commands.add_parser("load", help="load pathway files into Neo4j (idempotent MERGE)"))
    load.add_argument("--neo4j-uri", help="bolt:// or neo4j:// URI (+s for TLS); default NEO4J_URI")
    load.add_argument("--user", help="default NEO4J_USER or neo4j")
    load.add_argument("--database", help="default NEO4J_DATABASE or neo4j")
    load.add_argument("--namespace", help="default NEO4J_NAMESPACE or 'default'")
    load.set_defaults(func=_load)
