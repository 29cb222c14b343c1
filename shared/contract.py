"""The base of every JSON contract: camelCase on the wire, frozen, and the source of OpenAPI schemas."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from shared.errors import InvalidInput, Problem
from shared.fhir.record import IngestIssue

T = TypeVar("T")


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
    def of(cls, issue: IngestIssue) -> IssueOut:
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


class OutcomeIssue(Contract):
    """One ``OperationOutcome.issue`` as ``shared.errors.Problem.to_fhir`` writes it."""

    severity: Literal["fatal", "error", "warning", "information"]
    code: str
    diagnostics: str | None = None
    expression: list[str] | None = None


class OperationOutcome(Contract):
    """FHIR R4 OperationOutcome: the body of every error response (``shared.errors.operation_outcome``)."""

    resource_type: Literal["OperationOutcome"]
    issue: list[OutcomeIssue] = Field(min_length=1)


class Request(BaseModel):
    """The base of a JSON request body the code validates before reading it: camelCase on the wire,
    unknown members ignored (clients may send more than an endpoint reads)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


def validated(adapter: TypeAdapter[T], body: Any, where: str = "body") -> T:
    """``body`` validated by ``adapter`` (a request model or a union of them); a 400 OperationOutcome
    naming each problem and where it is otherwise (never the input's values)."""
    try:
        return adapter.validate_python(body)
    except ValidationError as exc:
        problems = [
            Problem(
                "structure",
                f"{'.'.join([where, *(str(p) for p in error['loc'])])}: {error['msg']}",
                expression=".".join([where, *(str(p) for p in error["loc"])]),
            )
            for error in exc.errors(include_input=False, include_url=False)[:20]
        ]
        raise InvalidInput(f"{where} is not valid", problems, issue_code="structure") from None
