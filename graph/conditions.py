"""Structured conditions: predicates over ``PatientRecord`` facts, never code strings.

A condition is a leaf (one fact with parameters) or ``all``/``any``/``not`` over conditions. The
data files write them as mappings::

    {fact: biomarker, name: EGFR, status: [positive]}
    {all: [{fact: stage, in: [IV]}, {any: [...]}]}

Every fact and parameter is declared in ``FACTS``; parsing rejects anything else, so a typo in a
pathway file fails at load, not silently at decision time. ``graph.facts`` evaluates them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.fhir.record import CPT, ICD10CM, INGREDIENT, LOINC, RXNORM, SNOMED, Code

# CPT codes may be listed on an orderable (orders arrive coded in CPT) but never described from CPT
# text; "ingredient" names a drug of shared/terminology/drugs.json.
CODE_SYSTEMS = {
    "snomed": SNOMED,
    "loinc": LOINC,
    "rxnorm": RXNORM,
    "icd10cm": ICD10CM,
    "cpt": CPT,
    "ingredient": INGREDIENT,
}
BIOMARKER_STATUSES = ("positive", "negative", "equivocal", "indeterminate", "measured")
DRUG_CLASSES = ("chemotherapy", "targeted", "immunotherapy", "hormonal")
PROCEDURE_CATEGORIES = ("surgery", "radiation", "chemoradiation", "imaging", "biopsy", "endoscopy")
DISEASE_STATUSES = ("progression", "stable", "response", "remission", "recurrence")
# A fact never recorded is unknown; a contraindication check may read it closed-world instead
# ("no documented ECOG 3-4", "no RAS mutation documented").
IF_MISSING = ("satisfied", "unsatisfied")
STAGE_VALUE = re.compile(r"^(0|I{1,3}|IV)([A-D][0-3]?)?$|^(limited|extensive)$")
TNM_VALUE = re.compile(r"^[TNM](is|X|[0-4])[a-d]?[0-3]?$")


class ConditionError(ValueError):
    """A condition in a pathway file is malformed; the message names the path inside it."""


@dataclass(frozen=True, slots=True)
class ParamSpec:
    kind: str  # strings | string | number | integer | boolean | codes
    required: bool = False
    choices: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None


# fact -> its parameters. "What each fact means" lives in graph.facts, beside its evaluator.
FACTS: dict[str, dict[str, ParamSpec]] = {
    "cancer": {
        "types": ParamSpec("strings"),
        "codes": ParamSpec("codes"),
        "role": ParamSpec("string", choices=("primary", "secondary")),
    },
    "stage": {"in": ParamSpec("strings", required=True, pattern=STAGE_VALUE)},
    "tnm": {
        "t": ParamSpec("strings", pattern=TNM_VALUE),
        "n": ParamSpec("strings", pattern=TNM_VALUE),
        "m": ParamSpec("strings", pattern=TNM_VALUE),
    },
    "metastatic": {"is": ParamSpec("boolean", required=True)},
    "biomarker": {
        "name": ParamSpec("string", required=True),
        "status": ParamSpec("strings", choices=BIOMARKER_STATUSES),
        "variant": ParamSpec("strings"),  # the reported change names one of these (T790M, G12C, V600E)
        "if_missing": ParamSpec("string", choices=IF_MISSING),
        "min": ParamSpec("number"),
        "max": ParamSpec("number"),
    },
    "performance": {
        "ecog_max": ParamSpec("integer"),
        "ecog_min": ParamSpec("integer"),
        "if_missing": ParamSpec("string", choices=IF_MISSING),
    },
    "age": {"min": ParamSpec("number"), "max": ParamSpec("number")},
    "sex": {"is": ParamSpec("string", required=True, choices=("female", "male"))},
    "therapy": {
        "classes": ParamSpec("strings", choices=DRUG_CLASSES),
        "drugs": ParamSpec("strings"),
        "min_lines": ParamSpec("integer"),
        "max_lines": ParamSpec("integer"),
    },
    "procedure": {"categories": ParamSpec("strings", choices=PROCEDURE_CATEGORIES), "codes": ParamSpec("codes")},
    "imaging": {"codes": ParamSpec("codes"), "modalities": ParamSpec("strings")},
    "disease_status": {"in": ParamSpec("strings", required=True, choices=DISEASE_STATUSES)},
    "progressed_on": {  # progression documented after exposure to one of these drugs or drug groups
        "drugs": ParamSpec("strings"),
        "groups": ParamSpec("strings"),
        "sensitive_after_days": ParamSpec("integer"),  # progression this long after the last dose does not count
    },
}


@dataclass(frozen=True, slots=True)
class Leaf:
    fact: str
    params: Mapping[str, Any]
    text: tuple[str, ...] = ()  # terms that free text may use when coded data cannot decide
    label: str = ""

    def get(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Condition, ...]
    label: str = ""


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Condition, ...]
    label: str = ""


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition
    label: str = ""


Condition = Leaf | AllOf | AnyOf | Not


def parse_condition(data: Any, where: str = "condition") -> Condition:
    if not isinstance(data, Mapping):
        raise ConditionError(f"{where}: a condition is a mapping, got {type(data).__name__}")
    label = str(data.get("label", ""))
    for combinator, cls in (("all", AllOf), ("any", AnyOf)):
        if combinator in data:
            _only(data, {combinator, "label"}, where)
            items = data[combinator]
            if not isinstance(items, list) or not items:
                raise ConditionError(f"{where}.{combinator}: a non-empty list of conditions is required")
            return cls(tuple(parse_condition(x, f"{where}.{combinator}[{i}]") for i, x in enumerate(items)), label)
    if "not" in data:
        _only(data, {"not", "label"}, where)
        return Not(parse_condition(data["not"], f"{where}.not"), label)
    fact = data.get("fact")
    if fact not in FACTS:
        raise ConditionError(f"{where}: unknown fact {fact!r}; known: {', '.join(sorted(FACTS))}")
    specs = FACTS[fact]
    _only(data, {"fact", "label", "text", *specs}, where)
    params: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in data:
            params[name] = _param(data[name], spec, f"{where}.{name}")
        elif spec.required:
            raise ConditionError(f"{where}: fact {fact!r} needs {name!r}")
    if fact in {"cancer", "tnm", "age", "performance", "progressed_on"} and not (set(params) - {"if_missing"}):
        raise ConditionError(f"{where}: fact {fact!r} needs at least one of {', '.join(specs)}")
    text = data.get("text", [])
    if not isinstance(text, list) or not all(isinstance(t, str) and t for t in text):
        raise ConditionError(f"{where}.text: a list of search terms is required")
    return Leaf(fact, params, tuple(text), label)


def _only(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(data) - allowed
    if extra:
        raise ConditionError(f"{where}: unexpected key(s) {', '.join(sorted(map(str, extra)))}")


def _param(value: Any, spec: ParamSpec, where: str) -> Any:
    if spec.kind == "codes":
        if not isinstance(value, list) or not value:
            raise ConditionError(f"{where}: a non-empty list of codes is required")
        return tuple(parse_code(v, f"{where}[{i}]") for i, v in enumerate(value))
    if spec.kind == "strings":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConditionError(f"{where}: a non-empty list of strings is required")
        for v in value:
            _check_choice(v, spec, where)
        return tuple(value)
    if spec.kind == "string":
        if not isinstance(value, str) or not value:
            raise ConditionError(f"{where}: a string is required")
        _check_choice(value, spec, where)
        return value
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            raise ConditionError(f"{where}: true or false is required")
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (spec.kind == "integer" and not isinstance(value, int))
    ):
        raise ConditionError(f"{where}: {'an integer' if spec.kind == 'integer' else 'a number'} is required")
    return value


def _check_choice(value: str, spec: ParamSpec, where: str) -> None:
    if spec.choices and value not in spec.choices:
        raise ConditionError(f"{where}: {value!r} is not one of {', '.join(spec.choices)}")
    if spec.pattern is not None and not spec.pattern.match(value):
        raise ConditionError(f"{where}: {value!r} is not a valid value")


def parse_code(value: Any, where: str) -> Code:
    if not isinstance(value, Mapping) or not isinstance(value.get("code"), str) or not value.get("system"):
        raise ConditionError(f"{where}: a code is a mapping with 'system' and 'code' (a string)")
    system = CODE_SYSTEMS.get(str(value["system"]), str(value["system"]))
    if system not in CODE_SYSTEMS.values():
        raise ConditionError(f"{where}: code system {value['system']!r} is not one of {', '.join(CODE_SYSTEMS)}")
    display = value.get("display")
    return Code(system, value["code"], str(display) if display else None)


def code_to_json(code: Code) -> dict[str, str]:
    out = {"system": code.system, "code": code.code}
    if code.display:
        out["display"] = code.display
    return out


def condition_to_json(cond: Condition) -> dict[str, Any]:
    """The file shape again: ``parse_condition(condition_to_json(c)) == c``."""
    out: dict[str, Any]
    if isinstance(cond, AllOf | AnyOf):
        out = {"all" if isinstance(cond, AllOf) else "any": [condition_to_json(c) for c in cond.items]}
    elif isinstance(cond, Not):
        out = {"not": condition_to_json(cond.item)}
    else:
        out = {"fact": cond.fact}
        for name, value in cond.params.items():
            if FACTS[cond.fact][name].kind == "codes":
                out[name] = [code_to_json(c) for c in value]
            else:
                out[name] = list(value) if isinstance(value, tuple) else value
        if cond.text:
            out["text"] = list(cond.text)
    if cond.label:
        out["label"] = cond.label
    return out


def describe(cond: Condition) -> str:
    """A short human reading of a condition, for trees and explanations."""
    if cond.label:
        return cond.label
    if isinstance(cond, AllOf | AnyOf):
        joiner = " and " if isinstance(cond, AllOf) else " or "
        return "(" + joiner.join(describe(c) for c in cond.items) + ")"
    if isinstance(cond, Not):
        return f"not {describe(cond.item)}"
    return _describe_leaf(cond)


def _describe_leaf(leaf: Leaf) -> str:
    p = leaf.params
    match leaf.fact:
        case "cancer":
            what = ", ".join(p.get("types", ())) or ", ".join(c.display or c.code for c in p.get("codes", ()))
            return f"{p['role'] + ' ' if 'role' in p else ''}cancer: {what}"
        case "stage":
            return "stage " + " or ".join(p["in"])
        case "tnm":
            return "TNM " + "; ".join(" or ".join(p[k]) for k in ("t", "n", "m") if k in p)
        case "metastatic":
            return "metastatic disease" if p["is"] else "no distant metastasis"
        case "biomarker":
            parts = [p["name"]]
            if "status" in p:
                parts.append(" or ".join(p["status"]))
            if "min" in p:
                parts.append(f">= {p['min']:g}")
            if "max" in p:
                parts.append(f"<= {p['max']:g}")
            return " ".join(parts) if len(parts) > 1 else f"{p['name']} result on record"
        case "performance":
            bounds = [f"ECOG >= {p['ecog_min']}"] if "ecog_min" in p else []
            return " and ".join([*bounds, *([f"ECOG <= {p['ecog_max']}"] if "ecog_max" in p else [])])
        case "age":
            return " and ".join(
                [*([f"age >= {p['min']:g}"] if "min" in p else []), *([f"age <= {p['max']:g}"] if "max" in p else [])]
            )
        case "sex":
            return f"sex {p['is']}"
        case "therapy":
            what = ", ".join((*p.get("drugs", ()), *p.get("classes", ()))) or "systemic therapy"
            bounds = [f"at least {p['min_lines']} line(s)"] if "min_lines" in p else []
            bounds += [f"at most {p['max_lines']} line(s)"] if "max_lines" in p else []
            return f"prior {what}" + (f" ({', '.join(bounds)})" if bounds else "")
        case "procedure":
            what = ", ".join((*p.get("categories", ()), *(c.display or c.code for c in p.get("codes", ()))))
            return f"procedure done: {what}"
        case "imaging":
            what = ", ".join((*p.get("modalities", ()), *(c.display or c.code for c in p.get("codes", ()))))
            return f"imaging done{': ' + what if what else ''}"
        case _:
            return "disease status: " + " or ".join(p["in"])


def leaves(cond: Condition) -> list[Leaf]:
    if isinstance(cond, Leaf):
        return [cond]
    if isinstance(cond, Not):
        return leaves(cond.item)
    return [leaf for item in cond.items for leaf in leaves(item)]
