"""Small readers over raw FHIR JSON that ingestion shares (codings, references, dates)."""

from __future__ import annotations

from typing import Any

from shared.fhir.record import Code, FhirTime


def codings(concept: Any) -> list[Code]:
    """The codings of a CodeableConcept dict (entries without system or code are dropped)."""
    if not isinstance(concept, dict):
        return []
    out = []
    for coding in concept.get("coding") or ():
        system, code = coding.get("system"), coding.get("code")
        if system and code:
            out.append(Code(system, str(code), coding.get("display")))
        elif code:
            out.append(Code("", str(code), coding.get("display")))
    return out


def concept_text(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    text = concept.get("text")
    if text:
        return str(text)
    for coding in concept.get("coding") or ():
        if coding.get("display"):
            return str(coding["display"])
    return None


def first_concept(value: Any) -> dict[str, Any] | None:
    """A CodeableConcept that may be given as a list (category, type) or as one object."""
    if isinstance(value, list):
        return value[0] if value and isinstance(value[0], dict) else None
    return value if isinstance(value, dict) else None


def all_codings(value: Any) -> list[Code]:
    if isinstance(value, list):
        return [c for item in value for c in codings(item)]
    return codings(value)


def primary_code(concept: Any, preferred_systems: tuple[str, ...] = ()) -> Code | None:
    found = codings(concept)
    for system in preferred_systems:
        for code in found:
            if code.system == system:
                return code
    if found:
        return found[0]
    text = concept_text(concept)
    return Code("", "", text) if text else None


def time_of(resource: dict[str, Any], *fields: str) -> tuple[FhirTime | None, FhirTime | None]:
    """(start, end) from the first present of ``fields``; each may be a dateTime or a Period."""
    for name in fields:
        if name.endswith("Period"):
            period = resource.get(name)
            if isinstance(period, dict) and (period.get("start") or period.get("end")):
                return FhirTime.parse(period.get("start")), FhirTime.parse(period.get("end"))
        elif resource.get(name):
            return FhirTime.parse(resource.get(name)), None
    return None, None


def status_code(concept: Any) -> str | None:
    found = codings(concept)
    return found[0].code if found else None


def profiles(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta")
    return list(meta.get("profile") or []) if isinstance(meta, dict) else []


def extension_value(resource: dict[str, Any], url_suffix: str) -> Any:
    for ext in resource.get("extension") or ():
        if isinstance(ext, dict) and str(ext.get("url", "")).endswith(url_suffix):
            for key, value in ext.items():
                if key.startswith("value"):
                    return value
    return None
