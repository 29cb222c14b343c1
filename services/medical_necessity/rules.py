"""Determination rules as data: what every systemic-therapy route must also meet, and what each
pathway covers (``rules.yaml``, ``scope/*.yaml``). Validated with pydantic at first use, so a bad
file fails naming the field, never at decision time."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from graph.conditions import Condition, Leaf, Not, parse_code
from graph.model import Code
from graph.queries import Sequencing
from shared.datafiles import validated
from shared.terminology import terminology

HERE = Path(__file__).parent


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Performance(_Strict):
    ecog_max: int = Field(ge=0, le=4)
    label: str


class GroupRule(_Strict):
    group: str
    pathways: tuple[str, ...]
    days: int | None = Field(default=None, gt=0)


class Retreatment(_Strict):
    label: str
    class_rule_for: tuple[Literal["chemotherapy", "targeted", "immunotherapy", "hormonal"], ...]
    continue_through_progression: tuple[GroupRule, ...] = ()
    sensitive_after_days: tuple[GroupRule, ...] = ()


class Rules(_Strict):
    provenance: dict[str, object]
    performance: Performance
    retreatment: Retreatment

    def systemic(self, pathway: str, ingredients: tuple[str, ...], route: Sequencing | None = None) -> list[Condition]:
        """What a route for these drugs must also meet on this pathway. Progression on the same drug
        rules out re-treatment unless the route itself names that drug as the prior therapy it
        follows ("irinotecan-refractory": irinotecan + cetuximab); progression on another drug of
        its group, unless the route names a drug of that group as what it follows (lorlatinib after
        alectinib, cabazitaxel after docetaxel are later-line options by design; nivolumab "after
        platinum" is not a route after pembrolizumab)."""
        route = route or Sequencing()
        terms = terminology()
        followed = {d.group for name in route.named_drugs if (d := terms.drug_by_name(name)) and d.group}
        drugs = [d for name in ingredients if (d := terms.drug_by_name(name)) and d.drug_class != "supportive"]
        if not drugs:
            return []
        out: list[Condition] = [
            Leaf(
                "performance",
                {"ecog_max": self.performance.ecog_max, "if_missing": "satisfied"},
                label=self.performance.label,
            )
        ]
        through = {r.group for r in self.retreatment.continue_through_progression if pathway in r.pathways}
        for drug in drugs:
            days = [
                r.days for r in self.retreatment.sensitive_after_days if drug.group == r.group and pathway in r.pathways
            ]
            window = days[0] if days else None
            # A re-challenge window is the sequencing rule for its group: it holds on every route.
            if drug.group in through or (window is None and drug.name in route.named_drugs):
                continue
            params: dict[str, object] = {"drugs": (drug.name,)}
            by_class = drug.drug_class in self.retreatment.class_rule_for and drug.group not in followed
            by_group = bool(drug.group) and (by_class or window is not None)
            if by_group:
                params["groups"] = (drug.group,)
            if window is not None:
                params["sensitive_after_days"] = window
            what = f"{drug.name}" + (f" or another {drug.group}" if by_group else "")
            out.append(Not(Leaf("progressed_on", params, label=f"progression on {what}"), label=self.retreatment.label))
        return out


class NotCovered(_Strict):
    title: str
    reason: str
    codes: tuple[dict[str, str], ...] = ()
    drugs: tuple[str, ...] = ()
    source: str | None = None

    def code_keys(self) -> set[str]:
        return {f"{c.system}|{c.code}" for c in self.parsed_codes()}

    def parsed_codes(self) -> list[Code]:
        return [parse_code(c, f"not_covered[{self.title}].codes") for c in self.codes]


class Scope(_Strict):
    pathway: str
    covers: str
    not_covered: tuple[NotCovered, ...] = ()

    def reason_for(self, code_keys: set[str], ingredients: tuple[str, ...]) -> NotCovered | None:
        for item in self.not_covered:
            if item.code_keys() & code_keys or set(item.drugs) & set(ingredients):
                return item
        return None


@cache
def rules() -> Rules:
    return validated(Rules, yaml.safe_load((HERE / "rules.yaml").read_text(encoding="utf-8")), "rules.yaml")


@cache
def scopes() -> dict[str, Scope]:
    """Each pathway's scope (``scope/<pathway>.yaml``), by pathway id."""
    out: dict[str, Scope] = {}
    for path in sorted((HERE / "scope").glob("*.yaml")):
        scope = validated(Scope, yaml.safe_load(path.read_text(encoding="utf-8")), f"scope/{path.name}")
        out[scope.pathway] = scope
    return out
