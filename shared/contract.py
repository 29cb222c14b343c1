"""The base of every JSON contract: camelCase on the wire, frozen, and the source of OpenAPI schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Contract(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


class IssueOut(Contract):
    """A problem with one input resource (ingestion is lenient: the rest of the input was used)."""

    severity: str
    resource_type: str | None
    id: str | None
    path: str
    message: str

    @classmethod
    def of(cls, issue: Any) -> IssueOut:
        """From a ``shared.fhir.record.IngestIssue``."""
        return cls(
            severity=issue.severity,
            resource_type=issue.resource_type,
            id=issue.resource_id,
            path=issue.path,
            message=issue.message,
        )


class CodeOut(Contract):
    system: str
    code: str
    display: str | None = None
