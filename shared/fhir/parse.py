"""Turn input bytes/files into raw FHIR resources with their location, or refuse the input.

Only input-level problems are raised here (not JSON, not FHIR, wrong resourceType); a bad single
resource is ingestion's business and becomes an ``IngestIssue``.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from shared.errors import InvalidInput, Problem

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
        rid = self.resource.get("id")
        return rid if isinstance(rid, str) else None


def _loads(data: bytes | str, where: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Position only: the message of the decoder may quote the input.
        raise InvalidInput(
            f"{where} is not valid JSON (error near character {exc.pos})",
            [Problem("structure", f"not valid JSON near character {exc.pos}", expression=where)],
            issue_code="structure",
        ) from None


def _require_resource(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise InvalidInput(
            f"{where} is JSON but not a FHIR resource (no resourceType)",
            [Problem("structure", "JSON object without a resourceType", expression=where)],
            issue_code="structure",
        )
    return doc


def bundle_entries(bundle: dict[str, Any], where: str = "Bundle") -> list[RawResource]:
    """Resources of a Bundle of any type, with their fullUrl; nested Bundles are flattened."""
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
    out: list[RawResource] = []
    for i, entry in enumerate(entries):
        path = f"{where}.entry[{i}].resource"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            # transaction-response entries without a resource, or junk: nothing to use.
            out.append(RawResource({"resourceType": None}, path))
            continue
        if resource.get("resourceType") == "Bundle":
            out.extend(bundle_entries(resource, path))
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
            raise InvalidInput(f"folder {path.name!r} holds no .json or .ndjson files")
        for file in files:
            yield from read_path(file)
    elif path.is_file():
        if path.name.endswith((".ndjson", ".ndjson.gz")):
            yield from _read_ndjson(path)
        else:
            yield from _read_json_file(path)
    else:
        raise InvalidInput(f"no such file or folder: {path}")


def _is_fhir_file(path: Path) -> bool:
    return path.name.endswith((".json", ".ndjson", ".ndjson.gz"))
