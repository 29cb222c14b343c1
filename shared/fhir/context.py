"""What every reader of one input shares: its references, the code tables, and the sink for issues."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from shared.fhir.record import CancerCondition, IngestIssue
from shared.fhir.references import ReferenceIndex
from shared.terminology import Terminology


@dataclass
class Context:
    """What every reader needs: the input's references, the code tables, and the sink for issues."""

    index: ReferenceIndex
    terms: Terminology
    issues: list[IngestIssue] = field(default_factory=list)
    # Facts whose links are resolved after all resources are read.
    stage_links: dict[str, str] = field(default_factory=dict)  # Observation key -> Condition key
    members: dict[str, list[str]] = field(default_factory=dict)  # stage group obs -> member obs keys
    # Cancers known only from a stage-bearing diagnosis code ("NSCLC, TNM stage 1"): used when
    # no other Condition of the record records that cancer.
    staged_diagnoses: list[CancerCondition] = field(default_factory=list)
    reason_types: dict[str, set[str]] = field(default_factory=dict)  # resource key -> cancer types in reasonCode

    def warn(self, key: str, path: str, message: str) -> None:
        self._issue("warning", key, path, message)

    def error(self, key: str, path: str, message: str) -> None:
        self._issue("error", key, path, message)

    def _issue(self, severity: Literal["error", "warning"], key: str, path: str, message: str) -> None:
        rtype, _, rid = key.partition("/")
        self.issues.append(IngestIssue(severity, rtype, rid, path, message))

    def refs(self, values: Any, key: str, path: str, field_name: str) -> tuple[str, ...]:
        """Resolve a list of references, warning (not failing) on each one that dangles."""
        out = []
        for ref in values or ():
            target = self.index.resolve(ref)
            if target:
                out.append(target)
            elif isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                if not ref["reference"].startswith("#"):
                    self.warn(key, f"{path}.{field_name}", "reference does not resolve within the input")
        return tuple(out)
