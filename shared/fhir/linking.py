"""Linking the facts of one patient after every resource is read: duplicate cancers merged,
corrected results replacing what they correct, TNM members folded into their group, stages and
markers attached to the cancer they describe, stage groups derived from T/N/M where none is given.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from shared.fhir.context import Context
from shared.fhir.record import (
    BiomarkerResult,
    CancerCondition,
    PatientRecord,
    RiskGroup,
    StageAssessment,
    latest_cancer_before,
)
from shared.staging import derive_stage_group, normalise_category, prostate_risk_group

R = TypeVar("R", BiomarkerResult, StageAssessment)
CORRECTIONS = {"amended", "corrected"}


def _superseded_dropped(results: list[R]) -> list[R]:
    """An amended or corrected result replaces the earlier result of the same test on the same
    day (EHRs send both when a value is corrected under a new id)."""
    corrected = {_same_test(r) for r in results if r.result_status in CORRECTIONS}
    if not corrected:
        return results
    return [r for r in results if r.result_status in CORRECTIONS or _same_test(r) not in corrected]


def _same_test(result: BiomarkerResult | StageAssessment) -> tuple[object, ...]:
    day = result.date.day if result.date else None
    if isinstance(result, BiomarkerResult):
        return ("biomarker", result.name, result.code.key, day)
    part = "group" if result.stage else "t" if result.t else "n" if result.n else "m"
    return ("stage", result.system, result.kind, part, day)


def derive_stages(cancer: CancerCondition, ctx: Context) -> list[StageAssessment]:
    """Per kind (clinical, pathological): when T, N and M are on record but no stage group at or
    after them, derive the AJCC 8 group (prostate: with PSA and Grade Group), saying from what.
    T/N/M that cannot give a group (TX, a missing category) are reported."""
    ajcc = [s for s in cancer.stages if s.system == "AJCC"]
    out: list[StageAssessment] = []
    for kind in ("clinical", "pathological"):
        of_kind = [s for s in ajcc if s.kind == kind]
        parts = {p: next((s for s in reversed(of_kind) if getattr(s, p)), None) for p in ("t", "n", "m")}
        present = [s for s in parts.values() if s is not None]
        if not present:
            continue
        latest = max((s.date for s in present if s.date), default=None)
        if any(s.stage and (latest is None or s.date is None or s.date >= latest) for s in of_kind):
            continue
        values = {p: (getattr(s, p) if s else None) for p, s in parts.items()}
        derived = derive_stage_group(
            cancer.cancer_type,
            values["t"],
            values["n"],
            values["m"],
            grade_group=int(group) if (group := _latest_quantity(cancer, "Grade Group")) is not None else None,
            psa=_latest_quantity(cancer, "PSA"),
        )
        sources = tuple(dict.fromkeys(s.source for s in present))
        inputs = sources + _prostate_inputs(cancer) if cancer.cancer_type == "prostate" else sources
        if derived is None:
            given = ", ".join(normalise_category(v, p) or "?" for p, v in values.items() if v)
            ctx.warn(
                sources[0],
                sources[0],
                f"{kind} stage group could not be derived from the categories on record ({given}) "
                f"for a {cancer.cancer_type} cancer",
            )
            continue
        out.append(
            StageAssessment(
                derived.group,
                latest,
                kind,
                sources[0],
                t=values["t"],
                n=values["n"],
                m=values["m"],
                cancer_source=cancer.source,
                element=f"derived ({derived.edition}: {derived.rule})",
                derived_from=inputs,
                rule=derived.rule,
            )
        )
    return out


RISK_SCHEME = "AUA/ASTRO/SUO 2022 (Eastham et al., J Urol 2022;208:10-18), as publicly described"


def derive_risk_group(cancer: CancerCondition) -> RiskGroup | None:
    """The risk group of a localised prostate cancer from its latest T category, Grade Group and PSA."""
    if cancer.cancer_type != "prostate":
        return None
    t = next((s for s in reversed(cancer.stages) if s.system == "AJCC" and s.t), None)
    grade, psa = _latest(cancer, "Grade Group"), _latest(cancer, "PSA")
    group = prostate_risk_group(
        t.t if t else None,
        int(grade.quantity) if grade and grade.quantity is not None else None,
        psa.quantity if psa else None,
    )
    if group is None:
        return None
    used = [f for f in (t, grade, psa) if f is not None]
    dates = [f.date for f in used if f.date is not None]
    return RiskGroup(group, RISK_SCHEME, tuple(dict.fromkeys(f.source for f in used)), max(dates, default=None))


def _latest(cancer: CancerCondition, name: str) -> BiomarkerResult | None:
    values = [b for b in cancer.biomarkers if b.name == name and b.quantity is not None]
    return values[-1] if values else None


def _latest_quantity(cancer: CancerCondition, name: str) -> float | None:
    found = _latest(cancer, name)
    return found.quantity if found else None


def _prostate_inputs(cancer: CancerCondition) -> tuple[str, ...]:
    """The PSA and Grade Group results a prostate stage group was derived with."""
    return tuple(b.source for name in ("PSA", "Grade Group") if (b := _latest(cancer, name)) is not None)


def _resolve_reason_codes(rec: PatientRecord, ctx: Context) -> None:
    """An order or procedure that names its cancer only by code is about the record's one cancer
    of that type (NSCLC also matches a lung cancer of unknown histology); several such cancers,
    or none: left unresolved, and attribution falls back to dates."""
    if not ctx.reason_types:
        return
    cancers = rec.cancers_by_source()

    def owner(types: set[str]) -> str | None:
        wanted = types | ({"lung"} if types & {"nsclc", "sclc"} else set())
        fitting = {c.source for c in rec.cancers if c.cancer_type in wanted and c.role == "primary"}
        return next(iter(fitting)) if len(fitting) == 1 else None

    def resolved(key: str, reasons: tuple[str, ...]) -> tuple[str, ...]:
        types = ctx.reason_types.get(key)
        if types and not any(r in cancers for r in reasons) and (found := owner(types)):
            return (*reasons, found)
        return reasons

    for medication in rec.medications:
        medication.reasons = resolved(medication.source, medication.reasons)
    for procedure in rec.procedures:
        procedure.reasons = resolved(procedure.source, procedure.reasons)
    for order in rec.orders:
        order.reasons = resolved(order.reference, order.reasons)


MERGE_WINDOW_DAYS = 365


def _onset(cancer: CancerCondition) -> datetime:
    return cancer.onset.instant if cancer.onset else datetime.min.replace(tzinfo=UTC)


def _merge_duplicate_cancers(rec: PatientRecord, ctx: Context) -> None:
    """One cancer, several Conditions (Synthea: 'Neoplasm of prostate' + 'Carcinoma in situ of
    prostate' on one day): fold same-type, same-role conditions diagnosed within a year into the
    most specific one, keeping the earliest onset and every source."""
    kept: list[CancerCondition] = []
    for cancer in sorted(rec.cancers, key=lambda c: (c.onset is None, c.onset)):
        twin = next(
            (
                k
                for k in kept
                if k.cancer_type == cancer.cancer_type
                and k.role == cancer.role
                and k.onset
                and cancer.onset
                and (cancer.onset.instant - k.onset.instant).days <= MERGE_WINDOW_DAYS
            ),
            None,
        )
        if twin is None:
            kept.append(cancer)
            continue
        twin.merged_sources = (*twin.merged_sources, cancer.source)
        twin.stages.extend(cancer.stages)
        if ctx.terms.is_generic_cancer_code(twin.code) and not ctx.terms.is_generic_cancer_code(cancer.code):
            twin.code, twin.histology = cancer.code, twin.histology or cancer.histology
        for link, target in list(ctx.stage_links.items()):
            if target == cancer.source:
                ctx.stage_links[link] = twin.source
    rec.cancers = kept


def link(rec: PatientRecord, ctx: Context) -> None:
    """Attach stages and biomarkers to the cancer they describe, derive missing stage groups,
    drop results that a correction replaced; sort everything by time."""
    recorded = {c.cancer_type for c in rec.cancers if c.role == "primary"}
    for diagnosis in ctx.staged_diagnoses:
        family = (
            {diagnosis.cancer_type, "lung"} if diagnosis.cancer_type in {"nsclc", "sclc"} else {diagnosis.cancer_type}
        )
        if not family & recorded and diagnosis.source in {s.source for s in rec.stages}:
            rec.cancers.append(diagnosis)  # the stage-bearing code is the only record of this cancer
            recorded.add(diagnosis.cancer_type)
    _merge_duplicate_cancers(rec, ctx)
    _resolve_reason_codes(rec, ctx)
    rec.biomarkers = _superseded_dropped(rec.biomarkers)
    rec.stages = _superseded_dropped(rec.stages)
    by_key = rec.cancers_by_source()
    primaries = [c for c in rec.cancers if c.role == "primary"] or rec.cancers
    by_type: dict[str, list[Any]] = {}
    for cancer in primaries:
        by_type.setdefault(cancer.cancer_type, []).append(cancer)
        if cancer.cancer_type in {"nsclc", "sclc"}:
            by_type.setdefault("lung", []).append(cancer)

    # Merge TNM member observations into their stage group, so one assessment carries T, N, M.
    members = {m for ms in ctx.members.values() for m in ms}
    stage_by_source = {s.source: s for s in rec.stages}
    for group_key, member_keys in ctx.members.items():
        group = stage_by_source.get(group_key)
        for member_key in member_keys:
            member = stage_by_source.get(member_key)
            if group and member:
                group.t, group.n, group.m = group.t or member.t, group.n or member.n, group.m or member.m
    rec.stages = [s for s in rec.stages if s.source not in members]

    def target(source: str, when: Any, marker: str | None = None) -> Any:
        allowed = ctx.terms.marker_cancer_types.get(marker or "")
        if allowed is not None:
            fitting = [c for c in primaries if c.cancer_type in allowed]
            return max(fitting, key=_onset, default=None)
        link = ctx.stage_links.get(source)
        if link and link in by_key:
            return by_key[link]
        if link and link.startswith("type:"):
            candidates = by_type.get(link[5:], [])
            if candidates:
                return candidates[0]
        if len(primaries) == 1:
            return primaries[0]
        # Several cancers and nothing says which: the most recent diagnosed on or before the fact.
        return latest_cancer_before(primaries, when)

    for stage in sorted(rec.stages, key=lambda s: (s.date is None, s.date)):
        cancer = target(stage.source, stage.date)
        if cancer is not None:
            stage.cancer_source = cancer.source
            cancer.stages.append(stage)
    for biomarker in rec.biomarkers:
        cancer = target(biomarker.source, biomarker.date, biomarker.name)
        if cancer is not None:
            biomarker.cancer_source = cancer.source
            cancer.biomarkers.append(biomarker)
    for status in rec.disease_status:
        cancer = target(status.source, status.date)
        status.cancer_source = cancer.source if cancer else None

    def when_key(value: Any) -> tuple[bool, Any]:
        return (value is None, value)

    for cancer in rec.cancers:
        cancer.biomarkers.sort(key=lambda b: when_key(b.date))
        cancer.stages.sort(key=lambda s: when_key(s.date))
        derived = derive_stages(cancer, ctx)
        if derived:
            rec.stages.extend(derived)
            cancer.stages.extend(derived)
            cancer.stages.sort(key=lambda s: when_key(s.date))
        cancer.risk_group = derive_risk_group(cancer)
    rec.cancers.sort(key=lambda c: (c.role != "primary", when_key(c.onset)))
    rec.medications.sort(key=lambda m: when_key(m.start))
    rec.procedures.sort(key=lambda p: when_key(p.start))
    rec.notes.sort(key=lambda n: when_key(n.date))
