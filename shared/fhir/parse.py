"""Turn input bytes/files into raw FHIR resources with their location, or refuse the input.

Only input-level problems are raised here (not JSON, not FHIR, wrong resourceType, over a limit); a
bad single resource is ingestion's business and becomes an ``IngestIssue``.

Limits (``shared.config.limits()``) are checked before objects are built: JSON text is first reduced
to its bracket skeleton with C-speed bytes operations (escapes and strings removed), which gives the
exact number of objects/arrays and the nesting depth (``MAX_JSON_DEPTH``) without parsing; Bundle
entries (``MAX_BUNDLE_ENTRIES``, nested Bundles included) are counted before a ``RawResource`` is made.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from shared.config import limits
from shared.errors import InvalidInput, PayloadTooLarge, Problem, check_deadline

BUNDLE_TYPES = {
    "document",
    "message",
    "transaction",
    "transaction-response",
    "batch",
    "batch-response",
    "history",
    "searchset",
    "collection",
}
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_STRING = re.compile(rb'"[^"]*"')  # after escaped quotes are gone: linear, no backtracking
_SKELETON = bytes.maketrans(b"{[}]", b"(())")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"{}[]")


@dataclass(slots=True)
class RawResource:
    resource: dict[str, Any]
    path: str  # "Bundle.entry[3].resource" or "Condition.000.ndjson:12"
    full_url: str | None = None

    @property
    def type(self) -> str:
        return str(self.resource.get("resourceType"))

    @property
    def id(self) -> str | None:
        """The resource id when it is a FHIR id (1-64 of ``[A-Za-z0-9-.]``): anything else is not
        an identity, and must not travel into issues and error bodies."""
        rid = self.resource.get("id")
        return rid if isinstance(rid, str) and FHIR_ID.fullmatch(rid) else None


def json_shape(data: bytes | str, max_depth: int) -> tuple[int, int]:
    """(objects + arrays, nesting depth) of JSON text, without parsing it; the depth is exact up to
    ``max_depth + 1`` (deeper counts as ``max_depth + 1``). For invalid JSON the figures are
    approximate, and the parser rejects it afterwards."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    # Escaped backslashes first, then escaped quotes: what remains of '"' delimits strings.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = _STRING.sub(b"", unescaped).translate(_SKELETON, _NOT_BRACKET)
    nodes = skeleton.count(b"(")
    if nodes != skeleton.count(b")"):
        return nodes, 0  # not JSON: the parser says where
    depth = 0
    while skeleton and depth <= max_depth:  # each pass removes the innermost level
        skeleton = skeleton.replace(b"()", b"")
        depth += 1
    return nodes, depth


def check_json_limits(data: bytes | str, where: str) -> None:
    """``MAX_JSON_DEPTH`` and the object count (``MAX_BUNDLE_ENTRIES`` x 256) before parsing."""
    active = limits()
    nodes, depth = json_shape(data, active.max_json_depth)
    if nodes > active.max_json_nodes:
        message = (
            f"{where} holds more than {active.max_json_nodes} JSON objects and arrays "
            f"(MAX_BUNDLE_ENTRIES={active.max_bundle_entries} entries x 256)"
        )
        raise PayloadTooLarge(message)
    if depth > active.max_json_depth:
        message = f"{where} is nested deeper than {active.max_json_depth} levels (MAX_JSON_DEPTH)"
        raise InvalidInput(message, [Problem("too-costly", message, expression=where)], issue_code="too-costly")


def load_json(data: bytes | str, where: str = "request body") -> Any:
    """JSON text -> Python objects, after ``check_json_limits``; a 400 naming the problem otherwise
    (its position only: the decoder's message may quote the input)."""
    check_json_limits(data, where)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        what = "holds a lone UTF-16 surrogate" if "surrogate" in str(exc) else "is not valid JSON"
        raise InvalidInput(
            f"{where} {what} (error near character {exc.pos})",
            [Problem("structure", f"{what} near character {exc.pos}", expression=where)],
            issue_code="structure",
        ) from None


_loads = load_json


def _require_resource(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise InvalidInput(
            f"{where} is JSON but not a FHIR resource (no resourceType)",
            [Problem("structure", "JSON object without a resourceType", expression=where)],
            issue_code="structure",
        )
    return doc


def bundle_entries(bundle: dict[str, Any], where: str = "Bundle", _seen: int = 0) -> list[RawResource]:
    """Resources of a Bundle of any type, with their fullUrl; nested Bundles are flattened. More than
    ``MAX_BUNDLE_ENTRIES`` entries in all (nested ones included) is refused (413) before any is read."""
    btype = bundle.get("type")
    if btype not in BUNDLE_TYPES:
        raise InvalidInput(
            f"Bundle.type must be one of {', '.join(sorted(BUNDLE_TYPES))}",
            [Problem("value", "unknown or missing Bundle.type", expression=f"{where}.type")],
            issue_code="value",
        )
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidInput(
            "Bundle.entry must be an array",
            [Problem("structure", "Bundle.entry is not an array", expression=f"{where}.entry")],
            issue_code="structure",
        )
    cap = limits().max_bundle_entries
    if _seen + len(entries) > cap:
        raise PayloadTooLarge(f"the Bundle holds more than {cap} entries (MAX_BUNDLE_ENTRIES)")
    out: list[RawResource] = []
    nested = 0  # entries of nested Bundles read so far
    for i, entry in enumerate(entries):
        check_deadline()
        path = f"{where}.entry[{i}].resource"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            # transaction-response entries without a resource, or junk: nothing to use.
            out.append(RawResource({"resourceType": None}, path))
            continue
        if resource.get("resourceType") == "Bundle":
            inner = bundle_entries(resource, path, _seen + len(entries) + nested)
            nested += len(inner)
            out.extend(inner)
            continue
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        full_url = entry.get("fullUrl")
        out.append(RawResource(resource, path, full_url if isinstance(full_url, str) else None))
    return out


def parse_bundle(data: bytes | str, *, where: str = "Bundle") -> list[RawResource]:
    """The request body of an API call: must be one FHIR Bundle."""
    doc = _require_resource(_loads(data, "request body"), "request body")
    if doc["resourceType"] != "Bundle":
        message = f"expected a FHIR Bundle, got resourceType {doc['resourceType'][:40]!r}"
        raise InvalidInput(message, [Problem("invalid", message, expression="resourceType")])
    return bundle_entries(doc, where)


def _read_ndjson(path: Path) -> Iterator[RawResource]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            yield RawResource(_require_resource(_loads(line, where), where), where)


def _read_json_file(path: Path) -> list[RawResource]:
    doc = _require_resource(_loads(path.read_bytes(), path.name), path.name)
    if doc["resourceType"] == "Bundle":
        return bundle_entries(doc, f"{path.name}#Bundle")
    return [RawResource(doc, path.name)]


def read_path(path: Path) -> Iterator[RawResource]:
    """A Bundle/resource JSON file, an NDJSON file, or a folder of them (e.g. a Bulk Data export)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _is_fhir_file(p))
        if not files:
            raise InvalidInput("the folder holds no .json or .ndjson files")
        for file in files:
            yield from read_path(file)
    elif path.is_file():
        if path.name.endswith((".ndjson", ".ndjson.gz")):
            yield from _read_ndjson(path)
        else:
            yield from _read_json_file(path)
    else:
        raise InvalidInput("no such file or folder", issue_code="not-found")  # the path is the caller's own


def _is_fhir_file(path: Path) -> bool:
    return path.name.endswith((".json", ".ndjson", ".ndjson.gz"))
