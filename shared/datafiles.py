"""One way to validate the project's data files (note rules, patterns, necessity rules and scopes):
a pydantic model for the file's shape, and a ``DataFileError`` naming the file, the place
(``rules[3].direction``) and the value when the data does not fit, so a bad file fails when it is
loaded and says where, never at decision time."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class DataFileError(ValueError):
    """A data file does not fit its model."""


def problem(name: str, exc: ValidationError) -> str:
    """The first problem: ``name: place: message (got value)``."""
    error = exc.errors(include_url=False)[0]
    parts = [part for part in error["loc"] if part != "[key]"]  # a dict key's own error: its place is the key
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".")
    got = f" (got {error['input']!r})" if error["type"] != "missing" and not isinstance(error["input"], dict) else ""
    return f"{name}: {where or 'top level'}: {error['msg']}{got}"


def validated(
    model: type[M],
    data: Any,
    name: str,
    *,
    context: dict[str, Any] | None = None,
    error: type[ValueError] = DataFileError,
) -> M:
    """``data`` (a parsed file called ``name``) as ``model``, or ``error`` naming what does not fit."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise error(problem(name, exc)) from None
