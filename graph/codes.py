"""Is a code well-formed for its system? Check digits catch most typos in hand-written content.

SNOMED CT identifiers end in a Verhoeff check digit and carry a partition id; LOINC codes end in
a mod-10 check digit; RxNorm CUIs are plain integers; ICD-10-CM codes follow a letter-digit
pattern. A well-formed code can still be the wrong concept: that is what clinical review is for.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from shared.fhir.record import CPT, ICD10CM, INGREDIENT, LOINC, RXNORM, SNOMED
from shared.terminology import terminology

_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]
_LOINC_ANSWER = re.compile(r"^L[AP][0-9]{1,7}-[0-9]$")
_ICD10CM = re.compile(r"^[A-TV-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")
_CPT = re.compile(r"^[0-9]{4}[0-9FTU]$")  # Category I (5 digits), II (F) and III (T) codes


def _known_ingredient(name: str) -> bool:
    drug = terminology().drug_by_name(name)
    return drug is not None and drug.name == name


def verhoeff_ok(digits: str) -> bool:
    check = 0
    for i, ch in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(ch)]]
    return check == 0


def snomed_ok(code: str) -> bool:
    # 6-18 digits; the partition id (2nd and 3rd from the right) says concept (x0) for core ids.
    return code.isdigit() and 6 <= len(code) <= 18 and code[0] != "0" and verhoeff_ok(code)


def loinc_ok(code: str) -> bool:
    if _LOINC_ANSWER.match(code):  # answer (LA) and part (LP) codes: no check digit rule to apply
        return True
    body, _, check = code.partition("-")
    if not body.isdigit() or len(check) != 1 or not check.isdigit():
        return False
    # Mod 10 (Luhn variant): double every other digit from the right of the body.
    total = 0
    for i, ch in enumerate(reversed(body)):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n // 10 + n % 10
    return (10 - total % 10) % 10 == int(check)


def code_problem(system: str, code: str) -> str | None:
    """None if ``code`` is well-formed for ``system``, else what is wrong with it."""
    checks: dict[str, tuple[Callable[[str], object], str]] = {
        SNOMED: (snomed_ok, "not a SNOMED CT identifier (digits with a Verhoeff check digit)"),
        LOINC: (loinc_ok, "not a LOINC code (digits, hyphen, mod-10 check digit)"),
        RXNORM: (lambda c: c.isdigit() and len(c) <= 8, "not an RxNorm CUI (an integer)"),
        ICD10CM: (_ICD10CM.match, "not an ICD-10-CM code"),
        CPT: (_CPT.match, "not a CPT code (4 digits and a digit, F or T)"),
        INGREDIENT: (_known_ingredient, "not a drug name of shared/terminology/drugs.json"),
    }
    if system not in checks:
        return f"code system {system!r} is not SNOMED CT, LOINC, RxNorm, ICD-10-CM, CPT or an ingredient"
    ok, message = checks[system]
    return None if ok(code) else f"{code!r} is {message}"
