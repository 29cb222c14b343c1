"""Small readers over raw FHIR JSON that ingestion shares (codings, references, dates)."""

from __future__ import annotations

from typing import Any

from shared.fhir.record import AJCC, CPT, HGNC, ICD10CM, ICDO3, LOINC, NCIT, RXNORM, SNOMED, Code, FhirTime

# Code systems as FHIR data writes them: canonical URLs, older aliases and OIDs (Epic and Cerner
# exports use OIDs), so a code is recognised whatever spelling of its system it arrives with.
SYSTEM_ALIASES = {
    "loinc": LOINC,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "snomed": SNOMED,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "rxnorm": RXNORM,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "icd10cm": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "http://hl7.org/fhir/sid/icd-10-us": ICD10CM,
    "icd-o-3": ICDO3,
    "urn:oid:2.16.840.1.113883.6.43.1": ICDO3,
    "http://terminology.hl7.org/CodeSystem/icd-o": ICDO3,
    "ncit": NCIT,
    "urn:oid:2.16.840.1.113883.3.26.1.1": NCIT,
    "http://ncimeta.nci.nih.gov": NCIT,
    "hgnc": HGNC,
    "http://www.genenames.org/geneId": HGNC,
    "https://www.genenames.org": HGNC,
    "https://www.genenames.org/": HGNC,
    "http://www.genenames.org/": HGNC,
    "ajcc": AJCC,
    "cpt": CPT,
    "urn:oid:2.16.840.1.113883.6.12": CPT,
}


def canonical_system(system: str) -> str:
    """The canonical URL of a code system ("urn:oid:2.16.840.1.113883.6.1" -> LOINC); others as given."""
    if not system:
        return system
    return SYSTEM_ALIASES.get(system) or SYSTEM_ALIASES.get(system.rstrip("/")) or system.rstrip("/")


def codings(concept: Any) -> list[Code]:
    """The codings of a CodeableConcept dict (entries without system or code are dropped)."""
    if not isinstance(concept, dict):
        return []
    out = []
    for coding in concept.get("coding") or ():
        system, code = coding.get("system"), coding.get("code")
        if system and code:
            out.append(Code(canonical_system(str(system)), str(code), coding.get("display")))
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
