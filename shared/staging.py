"""AJCC 8th edition stage groups from T, N, M (and, for prostate, PSA and Grade Group).

DEMONSTRATION ONLY; every answer requires clinical review. The lookup tables live in
``shared/terminology/staging.json`` (each with the public source it was written from: Goldstraw 2016 for
lung, Amin 2017 / NCI PDQ for colorectal, Giuliano 2017 for breast, Buyyounouski 2017 for prostate); they are
written in this project's own structure and are loaded once and validated (a bad row raises ``ValueError``
naming the table and row). No AJCC or NCCN text is reproduced.

Matching rules (``derive_stage_group``):

* inputs are normalised first (``cT3`` / ``pT3`` / ``ypT3`` / mCODE display strings -> ``T3``); ``TX``,
  ``NX`` and ``MX`` count as unknown, exactly like a missing value. ``MX`` is never read as ``M0``.
* a table category also covers its subcategories (a row listing ``T4`` matches ``T4b``; ``N1`` matches
  ``N1mi``) unless a more specific row matches the input (breast ``T1 N1mi`` -> IB, not IIA). ``*`` is any
  value, including unknown (M1 rows, breast ``any T N3``, prostate ``any T N1``).
* an unknown or missing value is expanded over every row; the answer is returned only when all those rows
  give the same group ("a category the rule needs is missing" -> ``None``).
* an input coarser than the table (lung ``T1`` where the table has T1a/T1b/T1c, plain ``M1`` where it has
  M1a/M1b/M1c) is expanded the same way; if the sub-rows disagree, the shared part of their groups is
  returned when there is one (``T1 N0 M0`` -> ``IA`` from IA1/IA2/IA3; colon ``T4 N0 M0`` -> ``II`` from
  IIB/IIC; lung ``M1`` -> ``IV``) and ``None`` when there is none (lung ``T2 N0 M0``: IB or IIA). The
  ``rule`` of such an answer says it is coarse.
* breast uses the ANATOMIC stage groups only: AJCC 8 prefers the prognostic stage groups, which also need
  grade, ER, PR and HER2 and are not derived here.
* prostate stages I-III need PSA (ng/mL) and the ISUP Grade Group; ``N1 M0`` (IVA) and ``M1`` (IVB) need
  neither. AJCC 8 does not subdivide pT2, which the table aliases to the cT1-cT2a rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

EDITION = "AJCC 8"
DATA_FILE = Path(__file__).parent / "terminology" / "staging.json"
PARTS = ("t", "n", "m")
OBSERVATION_KINDS = {"clinical", "pathological", "other"}
OBSERVATION_PARTS = {"group", "t", "n", "m"}
ROW_KEYS = {"t", "n", "m", "group", "psa", "grade_group", "note"}
WILDCARD = "*"


# prefixes of a TNM category: c, p, yc, yp, r, rp, a ... (AJCC classification prefixes)
_PREFIX = r"(?:[cpyra]{1,3}\s*)?"
_CATEGORY = {
    "t": re.compile(_PREFIX + r"T(?P<cat>X|is|a|0|[1-4](?:mi|[a-e][1-3]?)?)(?P<mod>\s*\([^)]*\))?", re.I),
    "n": re.compile(_PREFIX + r"N(?P<cat>X|[0-3](?:mi|[a-c])?)(?P<mod>\s*\([^)]*\))?", re.I),
    "m": re.compile(_PREFIX + r"M(?P<cat>X|0|1[a-d]?)(?P<mod>\s*\([^)]*\))?", re.I),
}
_PREFIX_ONLY = re.compile(r"\s*(?P<prefix>[cpyra]{1,3})?\s*[TNM]", re.I)
# Wording around an AJCC value in SNOMED CT displays and free text.
AJCC_WORDING = re.compile(
    r"american joint committee on cancer|\bajcc\b|\(qualifier value\)|\(tumor staging\)|\(finding\)"
    r"|\b8th edition\b|\bstage group(?:ing)?\b",
    re.I,
)
_ROMAN = {"0": "0", "1": "I", "2": "II", "3": "III", "4": "IV"}
_STAGE = re.compile(r"^(?:stage)?([0-4]|0is|IV|III|II|I)([A-C]\d?)?$", re.IGNORECASE)
_STAGE_IN_TEXT = re.compile(r"\bstage\s*:?\s*((?:[0-4]|0is|IV|III|II|I)(?:[A-C]\d?)?)(?![A-Za-z0-9])", re.IGNORECASE)
_GROUP = re.compile(r"(?P<roman>0|IV|I{1,3})(?:(?P<letter>[A-C])(?P<digit>[1-3])?)?")


@dataclass(frozen=True, slots=True)
class DerivedStage:
    group: str  # normalised AJCC 8 stage group: "0", "IA1", "IB", "IIA", "IIIC", "IV", "IVB" ...
    edition: str  # "AJCC 8"
    rule: str  # which table row/rule gave it, short, e.g. "lung: T2b N0 M0"
    citation: str  # the public source of the table


@dataclass(frozen=True, slots=True)
class StageRow:
    t: tuple[str, ...]
    n: tuple[str, ...]
    m: tuple[str, ...]
    group: str
    psa: tuple[float | None, float | None] | None = None  # [lower inclusive, upper exclusive)
    grade_group: frozenset[int] | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class StageTable:
    name: str
    applies_to: tuple[str, ...]
    citation: str
    rows: tuple[StageRow, ...]
    aliases: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class StagingData:
    tables: Mapping[str, StageTable]
    by_cancer: Mapping[str, StageTable]
    observations: Mapping[str, Mapping[str, str]]
    ajcc_values: Mapping[str, str]
    other_systems: Mapping[str, str]
    grade_group_observations: frozenset[str]
    grade_group_values: Mapping[str, int]


# ------------------------------------------------------------------------------------------ normalising


def normalise_category(value: str | None, part: str) -> str | None:
    """``"cT3"`` / ``"pT2a"`` / ``"ypN1"`` / ``"American Joint Committee on Cancer cT3 (qualifier value)"`` ->
    ``"T3"`` / ``"T2a"`` / ``"N1"`` / ``"T3"``. ``part`` is ``"t"``, ``"n"`` or ``"m"``.

    The classification prefix (c, p, yc, yp, r, a) is dropped, and so is a trailing parenthesised modifier
    that does not change the stage group: ``Tis(DCIS)`` -> ``Tis``, ``N0(i+)`` -> ``N0``, ``N1a(sn)`` -> ``N1a``,
    ``M0(i+)`` -> ``M0``, ``M1a(0)`` -> ``M1a``. ``TX``/``NX``/``MX`` are kept (callers treat them as unknown).
    The lung notation ``T1a(mi)`` becomes ``T1mi``. Returns ``None`` for empty or unparseable text, or text of
    another part (``"cN1"`` as a T).
    """
    if part not in _CATEGORY:
        raise ValueError(f"part must be one of t, n, m, not {part!r}")
    if value is None:
        return None
    text = AJCC_WORDING.sub(" ", str(value)).strip()
    if not text:
        return None
    found = _CATEGORY[part].fullmatch(text)
    if found is None:
        return None
    cat = _canonical_suffix(found.group("cat"))
    modifier = (found.group("mod") or "").strip().lower()
    if part == "t" and cat == "1a" and modifier == "(mi)":
        cat = "1mi"  # IASLC writes minimally invasive adenocarcinoma as T1a(mi)
    return part.upper() + cat


def _canonical_suffix(cat: str) -> str:
    low = cat.lower()
    if low == "x":
        return "X"
    return low  # "is", "mi", "1a", "2b", "4d" ...


def normalise_stage(value: str | None) -> str | None:
    """A stage group as written -> its AJCC form: '3C', 'Stage IIIC', 'AJCC stage IIIC (qualifier
    value)', 'Stage IVB (M1b)' -> 'IIIC' / 'IVB'; 'limited'/'extensive' (SCLC) pass through; an
    unreadable value -> None (the caller reports it)."""
    if not value:
        return None
    text = AJCC_WORDING.sub(" ", value).strip()
    lowered = text.lower()
    if "extensive" in lowered:
        return "extensive"
    if "limited" in lowered:
        return "limited"
    match = _STAGE.match(re.sub(r"[\s\-]", "", text))
    if not match:  # "Stage IVB (M1b)", "Clinical stage: IIIA": the group that follows the word stage
        found = _STAGE_IN_TEXT.search(re.sub(r"\([^)]*\)", " ", text))
        match = _STAGE.match(found.group(1)) if found else None
    if not match:
        return None
    group = match.group(1).upper()
    group = _ROMAN.get(group, group)
    return group + (match.group(2) or "").upper()


def _prefix(value: str | None) -> str:
    """The lower-case classification prefix of a raw category ("pT2" -> "p", "ypT2" -> "yp", "T2" -> "")."""
    if not value:
        return ""
    text = AJCC_WORDING.sub(" ", str(value))
    found = _PREFIX_ONLY.match(text)
    return (found.group("prefix") or "").lower() if found else ""


# ------------------------------------------------------------------------------------------ loading


def _category_ok(value: Any, part: str) -> bool:
    if value == WILDCARD:
        return True
    return isinstance(value, str) and normalise_category(value, part) == value and not value.endswith("X")


def _parse_row(table: str, index: int, raw: Any) -> StageRow:
    where = f"staging table {table!r} row {index}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: not an object: {raw!r}")
    extra = set(raw) - ROW_KEYS
    if extra:
        raise ValueError(f"{where}: unknown keys {sorted(extra)} in {raw!r}")
    cats: dict[str, tuple[str, ...]] = {}
    for part in PARTS:
        values = raw.get(part)
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: {part!r} must be a non-empty list in {raw!r}")
        bad = [v for v in values if not _category_ok(v, part)]
        if bad:
            raise ValueError(f"{where}: bad {part.upper()} categories {bad} in {raw!r}")
        cats[part] = tuple(values)
    group = raw.get("group")
    if not isinstance(group, str) or _GROUP.fullmatch(group) is None:
        raise ValueError(f"{where}: bad stage group {group!r} in {raw!r}")
    psa: tuple[float | None, float | None] | None = None
    if "psa" in raw:
        rng = raw["psa"]
        ok = (
            isinstance(rng, list)
            and len(rng) == 2
            and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v >= 0) for v in rng)
            and rng != [None, None]
            and (rng[0] is None or rng[1] is None or rng[0] < rng[1])
        )
        if not ok:
            raise ValueError(f"{where}: bad psa range {rng!r} (want [low or null, high or null], low < high)")
        psa = (rng[0], rng[1])
    grade: frozenset[int] | None = None
    if "grade_group" in raw:
        gg = raw["grade_group"]
        if (
            not isinstance(gg, list)
            or not gg
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 for v in gg)
        ):
            raise ValueError(f"{where}: bad grade_group {gg!r} (want a list of 1..5)")
        grade = frozenset(gg)
    note = raw.get("note")
    if note is not None and not isinstance(note, str):
        raise ValueError(f"{where}: note must be text")
    return StageRow(cats["t"], cats["n"], cats["m"], group, psa, grade, note)


def _parse_table(name: str, raw: Any) -> StageTable:
    if not isinstance(raw, dict):
        raise ValueError(f"staging table {name!r}: not an object")
    citation = raw.get("citation")
    if not isinstance(citation, str) or not citation.strip():
        raise ValueError(f"staging table {name!r}: a non-empty citation is required")
    applies = raw.get("applies_to")
    if not isinstance(applies, list) or not applies or not all(isinstance(a, str) and a for a in applies):
        raise ValueError(f"staging table {name!r}: applies_to must be a non-empty list of cancer types")
    rows = raw.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"staging table {name!r}: rows must be a non-empty list")
    aliases = raw.get("aliases", {})
    if not isinstance(aliases, dict):
        raise ValueError(f"staging table {name!r}: aliases must be an object")
    for raw_t, target in aliases.items():
        if normalise_category(raw_t, "t") is None or not _category_ok(target, "t") or target == WILDCARD:
            raise ValueError(f"staging table {name!r}: bad alias {raw_t!r} -> {target!r}")
    parsed = tuple(_parse_row(name, i, row) for i, row in enumerate(rows))
    return StageTable(name, tuple(applies), citation.strip(), parsed, dict(aliases))


def _require_mapping(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"staging data: {key!r} must be an object")
    return value


def _check_key(section: str, key: Any) -> None:
    if not isinstance(key, str) or key.count("|") != 1 or key.split("|")[0] not in {"loinc", "snomed", "ncit"}:
        raise ValueError(f"staging data {section!r}: bad key {key!r} (want 'loinc|CODE', 'snomed|CODE', 'ncit|CODE')")


def load_staging_data(path: Path | str | None = None) -> StagingData:
    """Read and validate a staging data file (default: the project's, cached by ``staging_data()``)."""
    source = Path(path) if path is not None else DATA_FILE
    raw = json.loads(source.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError("staging data: top level must be an object")
    prov = _require_mapping(raw, "_provenance")
    if not prov.get("sources") or "clinical review" not in str(prov.get("review", "")):
        raise ValueError("staging data: _provenance needs sources and a clinical-review note")
    tables: dict[str, StageTable] = {}
    by_cancer: dict[str, StageTable] = {}
    for name, table_raw in _require_mapping(raw, "tables").items():
        table = _parse_table(name, table_raw)
        tables[name] = table
        for cancer in table.applies_to:
            if cancer in by_cancer:
                raise ValueError(f"staging table {name!r}: cancer type {cancer!r} already has a table")
            by_cancer[cancer] = table
    observations: dict[str, dict[str, str]] = {}
    for key, entry in _require_mapping(raw, "observations").items():
        _check_key("observations", key)
        if (
            not isinstance(entry, dict)
            or entry.get("kind") not in OBSERVATION_KINDS
            or entry.get("part") not in OBSERVATION_PARTS
        ):
            raise ValueError(f"staging data 'observations': bad entry {key!r}: {entry!r}")
        observations[key] = {"kind": entry["kind"], "part": entry["part"]}
    ajcc: dict[str, str] = {}
    for code, text in _require_mapping(raw, "ajcc_values").items():
        if not (isinstance(code, str) and code.isdigit() and isinstance(text, str)):
            raise ValueError(f"staging data 'ajcc_values': bad entry {code!r}: {text!r}")
        known = normalise_stage(text) or any(normalise_category(text, p) for p in PARTS)
        if not known and text not in {"0a", "0is", "IE", "IIE", "IS", "II bulky", "IIID"}:
            raise ValueError(f"staging data 'ajcc_values': {code!r} has unrecognised AJCC text {text!r}")
        ajcc[code] = text
    other: dict[str, str] = {}
    for key, name in _require_mapping(raw, "other_systems").items():
        _check_key("other_systems", key)
        if not isinstance(name, str) or not name:
            raise ValueError(f"staging data 'other_systems': bad entry {key!r}")
        other[key] = name
    gg_raw = _require_mapping(raw, "grade_group")
    gg_obs = _require_mapping(gg_raw, "observations")
    for key in gg_obs:
        _check_key("grade_group.observations", key)
    gg_values: dict[str, int] = {}
    for code, value in _require_mapping(gg_raw, "values").items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
            raise ValueError(f"staging data 'grade_group.values': {code!r} -> {value!r} is not 1..5")
        gg_values[str(code)] = value
    return StagingData(tables, by_cancer, observations, ajcc, other, frozenset(gg_obs), gg_values)


@cache
def staging_data() -> StagingData:
    """The project's staging data, loaded and validated once per process."""
    return load_staging_data()


# ------------------------------------------------------------------------------------------ matching


def _relation(value: str | None, allowed: Iterable[str]) -> tuple[str, int] | None:
    """How an input category meets a row's list: ("exact"|"ancestor", specificity) when the row covers the
    input (equal, a parent of it, or ``*``); ("coarse", 0) when the input is a parent of a listed category;
    ("unknown", 0) when the input is unknown; None when the row does not apply."""
    best: tuple[str, int] | None = None
    for cat in allowed:
        if cat == WILDCARD:
            rel = ("ancestor", 0)
        elif value is None:
            rel = ("unknown", 0)
        elif value == cat:
            rel = ("exact", len(cat))
        elif _refines(value, cat):
            rel = ("ancestor", len(cat))
        elif _refines(cat, value):
            rel = ("coarse", 0)
        else:
            continue
        if best is None or _rank(rel) > _rank(best):
            best = rel
    return best


def _rank(rel: tuple[str, int]) -> tuple[int, int]:
    order = {"unknown": 0, "coarse": 1, "ancestor": 2, "exact": 3}
    return (2 if rel[0] in {"exact", "ancestor"} else order[rel[0]], rel[1])


def _refines(child: str, parent: str) -> bool:
    """``T1a`` refines ``T1``; ``N1mi`` refines ``N1``; ``M1c`` refines ``M1``; ``Tis`` refines nothing."""
    if len(child) <= len(parent) or not child.startswith(parent):
        return False
    # T1 -> T1a / T1mi; T1a -> T1a1; but Tis and Ta have no children
    return parent[-1].isdigit() or (parent[-2:-1].isdigit() and child[len(parent)].isdigit())


def _in_range(psa: float, rng: tuple[float | None, float | None]) -> bool:
    low, high = rng
    return (low is None or psa >= low) and (high is None or psa < high)


def _shared_group(groups: set[str]) -> str | None:
    """The part every group shares: {IA1, IA2, IA3} -> IA; {IIB, IIC} -> II; {IB, IIA} -> None."""
    parsed = [_GROUP.fullmatch(g) for g in groups]
    if any(p is None for p in parsed):
        return None
    romans = {p.group("roman") for p in parsed if p}
    if len(romans) != 1:
        return None
    letters = {p.group("letter") for p in parsed if p}
    roman = romans.pop()
    if len(letters) == 1:
        letter = letters.pop()
        if letter:
            return roman + letter
    return roman


def derive_stage_group(
    cancer_type: str,
    t: str | None,
    n: str | None,
    m: str | None,
    *,
    grade_group: int | None = None,
    psa: float | None = None,
    data: StagingData | None = None,
) -> DerivedStage | None:
    """The AJCC 8 stage group for a cancer type from its T, N and M categories (see the module docstring).

    ``cancer_type``: nsclc, sclc, lung (one lung table), colon, rectum (colorectal), breast (anatomic stage
    groups), prostate (also needs ``psa`` in ng/mL and the ISUP ``grade_group`` for stages I-III). Anything
    else, or an answer the inputs cannot decide, gives ``None``. ``data`` is for tests (a loaded copy).
    """
    tables = (data or staging_data()).by_cancer
    table = tables.get((cancer_type or "").strip().lower())
    if table is None:
        return None
    cats: dict[str, str | None] = {
        "t": normalise_category(t, "t"),
        "n": normalise_category(n, "n"),
        "m": normalise_category(m, "m"),
    }
    shown_t = cats["t"]
    if cats["t"] is not None:
        alias = table.aliases.get(_prefix(t) + cats["t"])
        if alias:
            shown_t = f"{_prefix(t)}{cats['t']}={alias}"
            cats["t"] = alias
    known: dict[str, str | None] = {k: (None if v is None or v.endswith("X") else v) for k, v in cats.items()}
    gg = int(grade_group) if grade_group is not None and grade_group in {1, 2, 3, 4, 5} else None  # 4.0 -> 4
    psa_value = psa if psa is not None and psa >= 0 else None

    exact: list[tuple[int, StageRow]] = []
    expanded: list[StageRow] = []
    unknown_used = False
    for row in table.rows:
        rels = []
        for part in PARTS:
            rel = _relation(known[part], getattr(row, part))
            if rel is None:
                break
            rels.append(rel)
        else:
            kinds = {r[0] for r in rels}
            if row.psa is not None:
                if psa_value is None:
                    kinds.add("unknown")
                elif not _in_range(psa_value, row.psa):
                    continue
            if row.grade_group is not None:
                if gg is None:
                    kinds.add("unknown")
                elif gg not in row.grade_group:
                    continue
            if kinds <= {"exact", "ancestor"}:
                exact.append((sum(r[1] for r in rels), row))
            else:
                expanded.append(row)
                unknown_used = unknown_used or "unknown" in kinds

    described = " ".join(v or "?" for v in (shown_t, cats["n"], cats["m"]))
    if table.name == "prostate":
        described += f" PSA {psa_value if psa_value is not None else '?'} GG{gg if gg is not None else '?'}"
    label = f"{table.name}: {described}"

    if unknown_used:
        # something the rule may need is missing: every candidate row must agree
        groups = {row.group for _, row in exact} | {row.group for row in expanded}
        if len(groups) == 1:
            return DerivedStage(groups.pop(), EDITION, label, table.citation)
        return None
    if exact:
        top = max(score for score, _ in exact)
        groups = {row.group for score, row in exact if score == top}
        if len(groups) == 1:
            return DerivedStage(groups.pop(), EDITION, label, table.citation)
        return None
    groups = {row.group for row in expanded}
    if not groups:
        return None
    if len(groups) == 1:
        return DerivedStage(groups.pop(), EDITION, f"{label} (coarse input; all sub-rows agree)", table.citation)
    shared = _shared_group(groups)
    if shared is None:
        return None
    subrows = "/".join(sorted(groups))
    return DerivedStage(shared, EDITION, f"{label} (coarse input; sub-rows {subrows} share {shared})", table.citation)


# ------------------------------------------------------------------------------------------ prostate grading


def grade_group_from_gleason(primary: int, secondary: int) -> int | None:
    """ISUP Grade Group (Epstein et al., Am J Surg Pathol 2016) from primary + secondary Gleason patterns.

    score <= 6 -> 1; 3+4 -> 2; 4+3 -> 3; 8 (4+4, 3+5, 5+3) -> 4; 9-10 -> 5. Patterns outside 1..5 -> None.
    """
    if not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 5 for p in (primary, secondary)):
        return None
    score = primary + secondary
    if score <= 6:
        return 1
    if score == 7:
        return 2 if primary == 3 else 3 if primary == 4 else None
    if score == 8:
        return 4
    return 5


def gleason_from_grade_group(grade_group: int) -> tuple[int, int | None]:
    """``(lowest Gleason score, highest Gleason score or None when the group has a single score)``.

    1 -> (6, None) (the group is "6 or less", but 6 is the lowest score assigned in current practice);
    2 -> (7, None) (3+4); 3 -> (7, None) (4+3); 4 -> (8, None); 5 -> (9, 10). Anything else: ``ValueError``.
    """
    table: dict[int, tuple[int, int | None]] = {1: (6, None), 2: (7, None), 3: (7, None), 4: (8, None), 5: (9, 10)}
    if isinstance(grade_group, bool) or grade_group not in table:
        raise ValueError(f"ISUP Grade Group must be 1..5, not {grade_group!r}")
    return table[grade_group]


_RISK_ORDER = ("low", "intermediate", "high")


def _t_risk(t: str | None) -> tuple[int, int] | None:
    """(lowest, highest) risk index a T category allows under AUA/ASTRO 2022; None when unknown."""
    cat = normalise_category(t, "t")
    if cat is None or cat.endswith("X") or cat in {"T0", "Tis", "Ta"}:
        return None
    if cat.startswith(("T3", "T4")):
        return (2, 2)
    if cat.startswith("T1") or cat == "T2a":
        return (0, 0)
    if cat in {"T2b", "T2c"}:
        return (1, 1)
    if cat == "T2":  # T2a (low) or T2b/T2c (intermediate)
        return (0, 1)
    return None


def prostate_risk_group(t: str | None, grade_group: int | None, psa: float | None) -> str | None:
    """Risk group of clinically localised prostate cancer per the AUA/ASTRO/SUO guideline (Eastham et al.,
    J Urol 2022;208:10-18), as publicly described: "low" | "intermediate" | "high".

    low: cT1-cT2a and Grade Group 1 and PSA < 10 ng/mL (all three); intermediate: cT2b-cT2c or Grade Group 2-3
    or PSA 10 to < 20; high: cT3-cT4 or Grade Group 4-5 or PSA >= 20. The guideline has no "very-high" tier
    (that is NCCN's), so T3b/T4 are "high". A single high-risk feature decides even if another input is
    missing; otherwise a missing input (or a coarse ``T2``) that could change the answer gives ``None``.
    """
    ranges: list[tuple[int, int]] = []
    t_range = _t_risk(t)
    ranges.append(t_range if t_range is not None else (0, 2))
    if grade_group in {1, 2, 3, 4, 5}:
        idx = 0 if grade_group == 1 else 1 if grade_group in {2, 3} else 2
        ranges.append((idx, idx))
    else:
        ranges.append((0, 2))
    if psa is not None and psa >= 0:
        idx = 0 if psa < 10 else 1 if psa < 20 else 2
        ranges.append((idx, idx))
    else:
        ranges.append((0, 2))
    low = max(r[0] for r in ranges)
    high = max(r[1] for r in ranges)
    return _RISK_ORDER[low] if low == high else None
