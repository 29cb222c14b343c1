"""Which drug a MedicationRequest / Administration / Statement is about, and when it started.

A drug may be named by ``medicationCodeableConcept`` or by ``medicationReference`` (a Medication
in the input, or ``#contained`` in the resource), by an ingredient or product RxNorm code, by the
Medication's ingredients, or only by words (brand, generic, "5-FU", "FOLFOX"). Each way is tried
in that order and the one that worked is kept as ``identified_by``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.fhir.codes import codings, concept_text, primary_code
from shared.fhir.context import Context
from shared.fhir.record import RXNORM, Code, FhirTime
from shared.terminology import DrugMatch


@dataclass(frozen=True, slots=True)
class DrugIdentity:
    code: Code
    match: DrugMatch
    identified_by: str  # the element that named the drug; "" when nothing did
    text: str | None  # the words that name it (code text or display)
    named: bool  # the drug has a standard code or a name a person can read, known to our table or not
    codes: tuple[Code, ...] = ()  # every coding of the drug (product and ingredient)


def _contained(res: dict[str, Any], ref: str) -> dict[str, Any] | None:
    wanted = ref[1:]
    return next((c for c in res.get("contained") or () if isinstance(c, dict) and c.get("id") == wanted), None)


def _medication_resource(res: dict[str, Any], key: str, path: str, ctx: Context) -> tuple[dict[str, Any] | None, str]:
    ref = res.get("medicationReference")
    if not isinstance(ref, dict):
        return None, ""
    target = ref.get("reference")
    if isinstance(target, str) and target.startswith("#"):
        found = _contained(res, target)
        if found is None:
            ctx.warn(key, f"{path}.medicationReference", "contained medication not found in the resource")
        return found, "medicationReference -> contained Medication"
    resolved = ctx.index.get(ctx.index.resolve(ref))
    if resolved is None and isinstance(target, str):
        ctx.warn(key, f"{path}.medicationReference", "medication reference does not resolve within the input")
    return (resolved.resource if resolved else None), f"medicationReference -> {ctx.index.resolve(ref) or 'Medication'}"


def identify(res: dict[str, Any], key: str, path: str, ctx: Context) -> DrugIdentity:
    terms = ctx.terms
    concept = res.get("medicationCodeableConcept")
    element = "medicationCodeableConcept"
    medication: dict[str, Any] | None = None
    if concept is None:
        medication, element = _medication_resource(res, key, path, ctx)
        concept = medication.get("code") if medication else None
        if concept is None and isinstance(res.get("medicationReference"), dict):
            display = res["medicationReference"].get("display")
            concept = {"text": display} if display else None
            element = "medicationReference.display"
        else:
            element += ".code"
    found = codings(concept)
    text = concept_text(concept)
    match = terms.identify_drug(found, text)
    code = primary_code(concept, (RXNORM,)) or Code("", "", "unknown medication")
    if not match.ingredients and medication is not None:
        # A compounded or unnamed product: its ingredients say what it is.
        ingredient_codes: list[Code] = []
        words: list[str] = []
        for item in medication.get("ingredient") or ():
            item_concept = item.get("itemCodeableConcept")
            if item_concept is None and isinstance(item.get("itemReference"), dict):
                target = _contained(medication, item["itemReference"].get("reference") or "") or _contained(
                    res, item["itemReference"].get("reference") or ""
                )
                item_concept = target.get("code") if target else {"text": item["itemReference"].get("display")}
            ingredient_codes += codings(item_concept)
            words.append(concept_text(item_concept) or "")
        match = terms.identify_drug(ingredient_codes, " ".join(words))
        if match.ingredients:
            element = element.removesuffix(".code") + ".ingredient"
            found = found or ingredient_codes
    # Known to the table, or a standard code with a readable name (a drug that is not a cancer drug).
    named = bool(match.ingredients) or (bool(text) and any(c.system == RXNORM for c in found))
    via = f"{element} ({match.via})" if match.ingredients else ""
    return DrugIdentity(code, match, via, text, named, tuple(found))


def medication_start(res: dict[str, Any], authored: FhirTime | None) -> tuple[FhirTime | None, str]:
    """When a request's drug starts: the dosage timing (bounds or first event) when it gives one,
    else ``authoredOn`` (an order is often written days before the first dose)."""
    starts: list[FhirTime] = []
    for dosage in res.get("dosageInstruction") or ():
        timing = dosage.get("timing") if isinstance(dosage, dict) else None
        if not isinstance(timing, dict):
            continue
        bounds = (timing.get("repeat") or {}).get("boundsPeriod") or {}
        start = FhirTime.parse(bounds.get("start"))
        events = [t for t in (FhirTime.parse(e) for e in timing.get("event") or ()) if t is not None]
        starts += [t for t in (start, *events[:1]) if t is not None]
    if starts:
        return min(starts), "dosageInstruction.timing"
    return authored, "authoredOn"
