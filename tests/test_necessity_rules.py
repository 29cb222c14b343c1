"""The determination rules every systemic-therapy route must also meet (rules.yaml), and the
scope of each pathway (scope/*.yaml): validated data, applied the same way on every pathway."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from graph.networkx_store import NetworkXPathwayStore
from graph.queries import PathwayQueries
from services.medical_necessity import rules as rules_module
from services.medical_necessity.engine import assess
from services.medical_necessity.rules import Rules, rules, scopes
from shared.datafiles import DataFileError, validated
from shared.terminology import terminology
from tests.builders import disease_status, give, order_for, patient

EGFR_IV = {"EGFR": "positive", "ALK": "negative", "PD-L1": 10.0}


@pytest.fixture(scope="module")
def queries() -> PathwayQueries:
    return PathwayQueries(NetworkXPathwayStore.load())


def one(record, queries, drug, on="2024-09-01"):
    (d,) = assess(record, queries, [order_for(drug, on=on)]).determinations
    return d


def test_rules_file_is_validated():
    raw = yaml.safe_load((Path(rules_module.__file__).parent / "rules.yaml").read_text())
    assert Rules.model_validate(raw) == rules()
    with pytest.raises(ValidationError, match="ecog_max"):
        Rules.model_validate({**raw, "performance": {"ecog_max": 9, "label": "x"}})
    with pytest.raises(ValidationError, match="extra"):
        Rules.model_validate({**raw, "surprise": 1})
    # Loaded as a file, the problem names the file, the place and the value (shared.datafiles).
    with pytest.raises(DataFileError, match=r"^rules\.yaml: performance\.ecog_max: .*\(got 9\)$"):
        validated(Rules, {**raw, "performance": {"ecog_max": 9, "label": "x"}}, "rules.yaml")


def test_ecog_3_rules_out_systemic_therapy_and_a_missing_ecog_does_not_hold_it_back(queries):
    fit = one(patient("nsclc", stage="IVA", markers=EGFR_IV, ecog=1), queries, "osimertinib")
    unknown = one(patient("nsclc", stage="IVA", markers=EGFR_IV), queries, "osimertinib")
    frail = one(patient("nsclc", stage="IVA", markers=EGFR_IV, ecog=3), queries, "osimertinib")
    assert fit.determination == unknown.determination == "meets"
    assert frail.determination == "does-not-meet"
    assert any("ECOG 3-4" in d for d in frail.deciding)


def test_progression_on_the_same_drug_or_class_rules_out_re_treatment(queries):
    record = patient("nsclc", stage="IVA", markers=EGFR_IV, ecog=1)
    give(record, "osimertinib", on="2024-02-01")
    before = one(record, queries, "osimertinib", on="2024-05-01")  # continuing, no progression yet
    disease_status(record, "progression", on="2024-08-01")
    again = one(record, queries, "osimertinib")
    same_class = one(record, queries, "gefitinib")  # another EGFR TKI
    assert before.determination == "meets"
    assert again.determination == same_class.determination == "does-not-meet"
    assert "not progression on osimertinib or another EGFR TKI" in again.deciding
    (leaf,) = [c for c in again.criteria.children[0].children if c.label.startswith("no progression")]
    assert {e.source for e in leaf.children[0].evidence} >= {"Observation/status-2024-08-01"}


def test_a_late_platinum_relapse_in_sclc_may_be_re_treated(queries):
    def relapse(days_after: str) -> str:
        record = patient("sclc", stage="extensive", ecog=1)
        give(record, "carboplatin", "etoposide", on="2024-02-01")
        disease_status(record, "progression", on=days_after)
        (d,) = assess(record, queries, [order_for("carboplatin", on="2024-12-01")]).determinations
        return next(c.status for c in _leaves(d.criteria) if c.fact == "progressed_on")

    assert relapse("2024-04-01") == "satisfied"  # progressed within 6 months: platinum-resistant
    assert relapse("2024-10-01") == "unsatisfied"  # 8 months after: platinum-sensitive, re-challenge is standard


def _leaves(node):
    if node is None:
        return []
    if node.op == "leaf":
        return [node]
    return [leaf for child in node.children for leaf in _leaves(child)]


def test_adt_continues_through_progression_in_prostate_cancer():
    groups = {r.group for r in rules().retreatment.continue_through_progression if "prostate" in r.pathways}
    assert terminology().drug_by_name("leuprolide").group in groups
    conditions = rules().systemic("prostate", ("leuprolide",))
    assert [c.fact for c in conditions] == ["performance"]  # no re-treatment rule for ADT
    assert len(rules().systemic("nsclc", ("osimertinib",))) == 2
    assert rules().systemic("nsclc", ("ondansetron",)) == []  # supportive drugs are not systemic therapy


def test_every_pathway_has_a_scope_that_names_real_sources_codes_and_drugs(queries):
    found = scopes()
    for info in queries.active:
        scope = found.get(info.id)
        assert scope is not None and scope.covers.strip(), info.id
        sources = queries.store.sources(info.key)
        for item in scope.not_covered:
            assert item.source is None or item.source in sources, (info.id, item.title)
            item.parsed_codes()  # well-formed systems
            for drug in item.drugs:
                assert terminology().drug_by_name(drug) is not None, (info.id, drug)


def test_the_first_citation_is_the_setting_the_option_was_judged_in(queries):
    """A regimen used in several settings cites all their trials; the card's source must be the
    source of the step it was matched at (metastatic first line here), never an adjuvant trial."""
    d = one(patient("nsclc", stage="IVA", markers=EGFR_IV, ecog=1), queries, "osimertinib")
    assert d.option == "nsclc.rx.osimertinib" and d.citations
    assert "Stage IV" in d.citations[0].section or "first-line" in d.citations[0].section.lower()


def test_a_card_source_label_is_never_cut():
    from services.cds_hooks.cards import _source
    from services.medical_necessity.contract import CitationOut

    title = "Osimertinib in untreated EGFR-mutated advanced non-small-cell lung cancer (FLAURA), " * 3
    label = _source([CitationOut(title=title, publisher="NEJM", url="https://doi.org/x", section="Results")])["label"]
    assert label == f"NEJM: {title}" and "..." not in label


def test_note_search_matches_whole_words_and_answers_from_one_index():
    from datetime import date

    from services.medical_necessity.passages import passages_of
    from tests.builders import note

    record = patient("breast", stage="IIA")
    note(record, "Nasal swab rt-PCR for SARS-CoV-2 was negative before surgery.", "2024-02-01")
    note(record, "Surgery showed a pathologic complete response (pCR) after neoadjuvant therapy.", "2024-03-01")
    index = passages_of(record)
    (best,) = index.relevant(("pCR",), k=1)
    assert "pathologic complete response" in best.text  # a whole word, not the "PCR" of rt-PCR
    (phrase,) = index.relevant(("complete response",), k=1)
    assert phrase.text == best.text
    assert index.relevant(("pCR",), until=date(2024, 2, 15)) == []  # written after the order
