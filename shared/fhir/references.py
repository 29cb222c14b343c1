"""Resolve FHIR references inside one input: ``urn:uuid:``, ``Type/id``, absolute URLs and
conditional ``Type?identifier=system|value`` references, to a canonical ``Type/id`` key."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote

from shared.fhir.parse import RawResource

_TYPE_ID = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def type_and_id(reference: str) -> tuple[str, str] | None:
    """``(Type, id)`` of a literal reference (``Type/id``, absolute, versioned), or None."""
    match = _TYPE_ID.search(reference)
    return (match.group(1), match.group(2)) if match else None


def conditional_identifier(reference: str) -> tuple[str, str | None, str] | None:
    """``(Type, system or None, value)`` of ``Type?identifier=[system|]value``, or None: only identifier
    searches can be resolved without a server."""
    rtype, _, query = reference.partition("?")
    values = parse_qs(query, keep_blank_values=True).get("identifier")
    if not values:
        return None
    token = unquote(values[0])
    if "|" in token:
        system, _, value = token.partition("|")
        return rtype, system, value
    return rtype, None, token


class ReferenceIndex:
    def __init__(self) -> None:
        self.by_key: dict[str, RawResource] = {}
        self._by_full_url: dict[str, str] = {}
        self._by_identifier: dict[tuple[str, str, str], str] = {}  # (type, system, value) -> key
        self._by_bare_identifier: dict[tuple[str, str], str] = {}

    def add(self, raw: RawResource, *, with_identifiers: bool = True) -> str | None:
        rid = raw.id
        if rid is None:
            # Transaction bundles may carry resources without id: their fullUrl is the identity.
            if raw.full_url is None:
                return None
            rid = raw.full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
        key = f"{raw.type}/{rid}"
        self.by_key.setdefault(key, raw)
        if raw.full_url:
            self._by_full_url[raw.full_url] = key
        if with_identifiers:
            for ident in raw.resource.get("identifier") or ():
                if isinstance(ident, dict) and ident.get("value"):
                    value = str(ident["value"])
                    self._by_identifier[(raw.type, str(ident.get("system", "")), value)] = key
                    self._by_bare_identifier.setdefault((raw.type, value), key)
        return key

    def resolve(self, reference: Any) -> str | None:
        """The ``Type/id`` key a Reference (dict or string) points at within this input, or None."""
        if isinstance(reference, dict):
            reference = reference.get("reference")
        if not isinstance(reference, str) or not reference:
            return None
        if reference.startswith("#"):
            return None  # contained: local to the resource, never dangling
        if reference in self._by_full_url:
            return self._by_full_url[reference]
        if "?" in reference:
            found = conditional_identifier(reference)
            if found is None:
                return None
            rtype, system, value = found
            if system is None:
                return self._by_bare_identifier.get((rtype, value))
            return self._by_identifier.get((rtype, system, value))
        literal = type_and_id(reference)
        if literal:
            key = f"{literal[0]}/{literal[1]}"
            return key if key in self.by_key else None
        return None

    def get(self, key: str | None) -> RawResource | None:
        return self.by_key.get(key) if key else None


def is_contained(reference: Any) -> bool:
    ref = reference.get("reference") if isinstance(reference, dict) else reference
    return isinstance(ref, str) and ref.startswith("#")
