"""The one error family of OncoTwin.

Engines raise these; the HTTP layer (``shared.http``) turns them into a status code and a FHIR
``OperationOutcome`` in one place. Messages are written for the caller and must never contain
PHI or exception text from third-party code.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One ``OperationOutcome.issue``: what went wrong and where (a FHIRPath-like location)."""

    code: str  # FHIR issue-type code: invalid, structure, required, not-found, security, too-costly...
    diagnostics: str
    severity: str = "error"
    expression: str | None = None

    def to_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


def operation_outcome(problems: list[Problem]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [p.to_fhir() for p in problems]}


@dataclass
class OncoTwinError(Exception):
    """Base of every error a caller may see. ``status`` is the HTTP status it maps to."""

    message: str
    problems: list[Problem] = field(default_factory=list)
    status: int = 400
    issue_code: str = "processing"

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if not self.problems:
            self.problems = [Problem(code=self.issue_code, diagnostics=self.message)]

    def to_operation_outcome(self) -> dict[str, Any]:
        return operation_outcome(self.problems)

    def __str__(self) -> str:
        return self.message


class InvalidInput(OncoTwinError):
    """The input is not what the endpoint accepts (not JSON, not FHIR, breaks the R4 schema...)."""

    def __init__(self, message: str, problems: list[Problem] | None = None, issue_code: str = "invalid"):
        super().__init__(message, problems or [], 400, issue_code)


class UnprocessableInput(OncoTwinError):
    """Well-formed FHIR whose content cannot be used (no patient, dangling subject in strict mode)."""

    def __init__(self, message: str, problems: list[Problem] | None = None, issue_code: str = "processing"):
        super().__init__(message, problems or [], 422, issue_code)


class Unauthorized(OncoTwinError):
    """No credentials, or credentials that do not verify (missing, expired or forged token)."""

    def __init__(self, message: str = "A valid bearer token is required"):
        super().__init__(message, [], 401, "login")


class Forbidden(OncoTwinError):
    """The caller is known but lacks the scope this operation needs."""

    def __init__(self, message: str):
        super().__init__(message, [], 403, "forbidden")


class NotFound(OncoTwinError):
    def __init__(self, message: str):
        super().__init__(message, [], 404, "not-found")


class PayloadTooLarge(OncoTwinError):
    def __init__(self, message: str):
        super().__init__(message, [], 413, "too-costly")


class UnsupportedMediaType(OncoTwinError):
    def __init__(self, message: str):
        super().__init__(message, [], 415, "not-supported")


class UpstreamError(OncoTwinError):
    """A server we depend on (FHIR server, LLM) failed or timed out; retrying may help."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message, [], status, "transient")


class DeadlineExceeded(OncoTwinError):
    """The request's work ran past its deadline (``REQUEST_DEADLINE_SECONDS``) and was stopped at a
    safe point; 503 with ``Retry-After``. The process goes on serving."""

    def __init__(self, seconds: float):
        super().__init__(
            f"the request was stopped after its deadline of {seconds:g} s (REQUEST_DEADLINE_SECONDS); "
            "send less (fewer orders, entries or reports) or retry later",
            [],
            503,
            "timeout",
        )
        self.retry_after_s = max(1, round(seconds))


# --- the request deadline -------------------------------------------------------------------------
# A contextvar, so it follows the request (its thread, or a context copied into another) and never
# leaks into the next one. ``shared.http`` starts it per request; long loops (Bundle flattening,
# attachment decoding, each necessity order and judge call, each radiology chunk) call
# ``check_deadline``, which raises ``DeadlineExceeded`` once it has passed. Outside a request (CLI,
# Celery workers, which have their own time limits) there is no deadline and the check costs a lookup.
_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("oncotwin_deadline", default=None)


def start_deadline(seconds: float | None) -> None:
    """The current context's work must finish within ``seconds`` from now (None: no deadline)."""
    _DEADLINE.set(None if seconds is None else (time.monotonic() + seconds, seconds))


def check_deadline() -> None:
    """A safe point: raise ``DeadlineExceeded`` if the current request's deadline has passed."""
    current = _DEADLINE.get()
    if current is not None and time.monotonic() > current[0]:
        raise DeadlineExceeded(current[1])


# Failures worth retrying later: an upstream service (FHIR server, LLM: LLMUnavailable is an
# UpstreamError) or the network. Task retries add the database's connection errors.
TRANSIENT: tuple[type[Exception], ...] = (UpstreamError, ConnectionError, TimeoutError)


class ConfigError(Exception):
    """Configuration is invalid at start-up. Never reaches a client: the process refuses to start."""
