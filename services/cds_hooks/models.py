"""Shapes of what CDS Clients send (CDS Hooks 2.0): the hook request and the feedback body.

Validated with pydantic so a malformed call is a 400 naming the field, never a 500; unknown fields
are allowed (the spec reserves ``extension`` and clients add their own).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import InvalidInput, Problem

_ID = r"^[A-Za-z0-9\-.]{1,64}$"
M = TypeVar("M", bound=BaseModel)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class FhirAuthorization(_Lenient):
    access_token: str = Field(min_length=1, max_length=16 * 1024)
    token_type: str
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("token_type must be Bearer")
        return value


class HookContext(_Lenient):
    patient_id: str = Field(alias="patientId", pattern=_ID)
    user_id: str | None = Field(default=None, alias="userId")
    selections: list[str] | None = None
    draft_orders: dict[str, Any] | None = Field(default=None, alias="draftOrders")


class HookRequest(_Lenient):
    hook: str
    hook_instance: str = Field(alias="hookInstance", min_length=1, max_length=128)
    fhir_server: str | None = Field(default=None, alias="fhirServer", max_length=2048)
    fhir_authorization: FhirAuthorization | None = Field(default=None, alias="fhirAuthorization")
    context: HookContext
    prefetch: dict[str, Any] | None = None  # values checked per template key (others are ignored)

    @field_validator("fhir_server")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("fhirServer must be an http(s) URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        if self.fhir_authorization is not None and self.fhir_server is None:
            raise ValueError("fhirAuthorization requires fhirServer")
        return self


class Coding(_Lenient):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class OverrideReason(_Lenient):
    reason: Coding | None = None
    user_comment: str | None = Field(default=None, alias="userComment", max_length=4000)


class AcceptedSuggestion(_Lenient):
    id: str = Field(min_length=1, max_length=128)


class Feedback(_Lenient):
    card: str = Field(min_length=1, max_length=128)
    outcome: Literal["accepted", "overridden"]
    accepted_suggestions: list[AcceptedSuggestion] | None = Field(default=None, alias="acceptedSuggestions")
    override_reason: OverrideReason | None = Field(default=None, alias="overrideReason")
    outcome_timestamp: datetime = Field(alias="outcomeTimestamp")

    @model_validator(mode="after")
    def _accepted_names_suggestions(self) -> Feedback:
        if self.outcome == "accepted" and not self.accepted_suggestions:
            raise ValueError("acceptedSuggestions is required when outcome is accepted")
        return self


class FeedbackRequest(_Lenient):
    feedback: list[Feedback] = Field(min_length=1, max_length=500)


def parse(model: type[M], body: Any, what: str) -> M:
    """``body`` as ``model``, or ``InvalidInput`` listing where it breaks (never the input values)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = [
            Problem("invalid", err["msg"], expression=".".join(str(p) for p in err["loc"]) or None)
            for err in exc.errors(include_url=False, include_input=False, include_context=False)[:20]
        ]
        raise InvalidInput(f"{what} is not valid", problems) from None
