"""The shipped pathway content, the validator that guards it, and the graph command line."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from graph.codes import code_problem, loinc_ok, snomed_ok
from graph.export import to_dot, to_json, to_mermaid
from graph.loader import PATHWAY_DIR, PathwayFileError, load_file, load_pathways, pathway_from_dict
from graph.model import NodeKind
from graph.validate import validate
from oncotwin.cli import main
from shared.fhir.record import CPT, INGREDIENT, LOINC, RXNORM, SNOMED

CANCERS = {"nsclc", "sclc", "colon", "prostate", "breast"}
RAW = yaml.safe_load((PATHWAY_DIR / "nsclc.yaml").read_text(encoding="utf-8"))


def _problems(data: dict[str, Any]) -> list[str]:
    findings = validate([pathway_from_dict(data, "test.yaml")])
    return [f"{f.where}: {f.problem}" for f in findings if f.severity == "error"]


def test_shipped_content_is_valid_and_covers_five_cancers() -> None:
    pathways = load_pathways()
    assert {p.info.id for p in pathways} >= CANCERS
    assert [str(f) for f in validate(pathways)] == []
    for pathway in pathways:
        kinds = {n.step for n in pathway.nodes if n.kind is NodeKind.STEP}
        assert {"workup", "staging", "treatment", "surveillance"} <= {k.value for k in kinds if k}, pathway.key
        assert all(s.url.startswith("https://") for s in pathway.sources)
        assert "nccn" not in json.dumps(to_json(pathway)).lower()  # never NCCN material


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["edges"].append({"from": "nsclc.staging", "to": "nsclc.nowhere", "kind": "next"}), "dangling"),
        (
            lambda d: d["nodes"].append(
                {
                    "id": "nsclc.orphan",
                    "kind": "step",
                    "step": "referral",
                    "title": "Orphan",
                    "done_when": {"fact": "stage", "in": ["I"]},
                    "cites": [{"source": "pdq-nsclc", "section": "x"}],
                }
            ),
            "unreachable",
        ),
        (lambda d: d["nodes"][0].pop("cites"), "cites no source"),
        (lambda d: d["nodes"][0].update(cites=[{"source": "wikipedia", "section": "x"}]), "unknown source"),
        (lambda d: _node(d, "nsclc.ct-chest")["codes"][0].update(code="169069001"), "Verhoeff"),
        (lambda d: _node(d, "nsclc.test.alk")["codes"][0].update(code="46264-9"), "mod-10"),
        (lambda d: _node(d, "nsclc.drug.osimertinib")["codes"][0].update(code="2555"), "not among the terminology"),
        (
            lambda d: d["edges"].append({"from": "nsclc.rx.osimertinib", "to": "nsclc.staging", "kind": "includes"}),
            "cannot join a regimen to a step",
        ),
        (lambda d: d["pathway"].update(start="nsclc.drug.cisplatin"), "is not a step"),
    ],
)
def test_validator_finds_each_problem(mutate: Any, expected: str) -> None:
    data = copy.deepcopy(RAW)
    mutate(data)
    problems = _problems(data)
    assert any(expected in p for p in problems), problems


def _node(data: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in data["nodes"] if n["id"] == node_id)


def test_loader_names_the_file_and_place(tmp_path: Path) -> None:
    broken = copy.deepcopy(RAW)
    broken["edges"][4]["when"] = {"fact": "stage", "in": ["IIIZ"]}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    with pytest.raises(PathwayFileError, match=r"broken.yaml: edges\[4\].when.*'IIIZ' is not a valid value"):
        load_file(path)
    path.write_text("pathway: {id: [unclosed", encoding="utf-8")
    with pytest.raises(PathwayFileError, match=r"line \d+, column \d+: not valid YAML"):
        load_file(path)
    dup = copy.deepcopy(RAW)
    dup["nodes"].append(dict(dup["nodes"][0]))
    with pytest.raises(PathwayFileError, match=r"duplicate node id 'nsclc\.workup'"):
        pathway_from_dict(dup, "dup.yaml")


@pytest.mark.parametrize(
    ("system", "code", "ok"),
    [
        (SNOMED, "254637007", True),
        (SNOMED, "254637008", False),
        (SNOMED, "0254637007", False),
        (LOINC, "21908-9", True),
        (LOINC, "21908-8", False),
        (LOINC, "LA6576-8", True),
        (RXNORM, "1721560", True),
        (RXNORM, "RX123", False),
        (CPT, "77427", True),  # CPT codes may be listed (never described from CPT text)
        (CPT, "7742", False),
        (INGREDIENT, "pembrolizumab", True),
        (INGREDIENT, "Keytruda", False),  # the table's ingredient name, not a brand
        ("http://example.org/local", "X1", False),
    ],
)
def test_code_checks(system: str, code: str, ok: bool) -> None:
    assert (code_problem(system, code) is None) is ok


def test_every_shipped_code_passes_its_check_digit() -> None:
    for pathway in load_pathways():
        for node in pathway.nodes:
            for code in node.codes:
                if code.system == SNOMED:
                    assert snomed_ok(code.code), (node.id, code)
                if code.system == LOINC:
                    assert loinc_ok(code.code), (node.id, code)


def test_exports_show_every_node_and_edge() -> None:
    pathway = next(p for p in load_pathways() if p.info.id == "nsclc")
    dot, mermaid, data = to_dot(pathway), to_mermaid(pathway), to_json(pathway)
    assert dot.startswith('digraph "nsclc@') and dot.count(" -> ") == len(pathway.edges)
    assert mermaid.startswith("flowchart TD") and mermaid.count("-->") + mermaid.count("-.->") == len(pathway.edges)
    assert len(data["nodes"]) == len(pathway.nodes) and data["pathway"]["status"] == "demonstration"
    assert "every 6 months for 2 years" in mermaid


def test_cli_validate_and_export(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["graph", "validate"]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    assert main(["graph", "export", "--format", "json", "--pathway", "nsclc"]) == 0
    assert json.loads(capsys.readouterr().out)["pathway"]["id"] == "nsclc"
    assert main(["graph", "export", "--format", "mermaid", "--pathway", "nope"]) == 78
    bad = copy.deepcopy(RAW)
    bad["edges"].append({"from": "nsclc.staging", "to": "nsclc.nowhere", "kind": "next"})
    (tmp_path / "nsclc.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    assert main(["graph", "validate", "--dir", str(tmp_path)]) == 1
    assert "dangling" in capsys.readouterr().out


def test_json_export_is_a_loadable_pathway_file() -> None:
    for pathway in load_pathways():
        assert pathway_from_dict(json.loads(json.dumps(to_json(pathway))), pathway.file) == pathway


def test_cli_imports_a_foreign_plandefinition(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fixture = Path(__file__).parent / "fixtures" / "plandefinition" / "anc-example-plandefinition-anc-contact.json"
    assert main(["graph", "import", str(fixture)]) == 0
    captured = capsys.readouterr()
    assert "text/cql" in captured.err  # kept as 'needs mapping', not dropped
    imported = pathway_from_dict(json.loads(captured.out), "anc.json")
    assert imported.nodes and imported.info.status == "imported"
    assert any("text/cql" in text for n in imported.nodes for text in n.needs_mapping) or any(
        "text/cql" in text for e in imported.edges for text in e.needs_mapping
    )
    assert any("no source" in str(f) for f in validate([imported]))  # imported content is not yet reviewed
    (tmp_path / "x.json").write_text('{"resourceType": "Patient"}', encoding="utf-8")
    assert main(["graph", "import", str(tmp_path / "x.json")]) == 78


def test_cli_load_needs_a_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEO4J_PASSWORD", raising=False)
    monkeypatch.delenv("NEO4J_URI", raising=False)
    assert main(["graph", "load", "--neo4j-uri", "bolt://localhost:7687"]) == 78
