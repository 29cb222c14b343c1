"""Request and response shapes shared by the CPU dev server (``dsbd.serve``) and the vLLM plugin.

Why one module: the two front ends must accept exactly the same JSON and answer with exactly the
same JSON, so that ``shared/llm.py`` (and any other client) cannot tell a laptop from the GPU
deployment. Nothing here imports Flask, FastAPI, torch or vLLM; parsing is plain Python so the
plugin stays importable without its heavy dependencies.

Three request kinds, one parsed form (``DecodeRequest``):

- ``POST /plugins/dsbd/v1/completions``: the DSBD route (W beams + decoding statistics);
- ``POST /v1/completions`` and ``POST /v1/chat/completions``: the OpenAI-compatible subset.

Every bad value is a ``RequestError`` (HTTP 400, or 413 for oversized bodies) carrying the name of
the offending field, and is rendered as ``{"error": {"message", "type", "param", "code"}}`` as
vLLM and OpenAI do.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsbd.api import BeamParams, BeamResult, DSBDParams

DSBD_ROUTE = "/plugins/dsbd/v1/completions"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for: the dev server and the plugin refuse more (400)."""

    max_n: int = 16
    max_tokens: int = 1024
    max_prompt_tokens: int = 4096
    max_prompt_chars: int = 64_000
    max_messages: int = 64
    max_choices: int = 64
    max_choice_chars: int = 512
    max_schema_properties: int = 32
    max_stop: int = 4
    max_body_bytes: int = 1 << 20
    max_gamma: int = 16


DEFAULT_LIMITS = Limits()


class RequestError(Exception):
    """A request the server will not run; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.kind)


def bearer_matches(header: str | None, key: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <key>`` (digests, so lengths do not leak)."""
    if not key:
        return False  # an empty key is no key: never "matches" a missing header
    provided = header[7:] if header and header[:7].lower() == "bearer " else ""
    return hmac.compare_digest(
        hashlib.sha256(provided.encode("utf-8")).digest(), hashlib.sha256(key.encode("utf-8")).digest()
    )


def error_body(status: int, message: str, param: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """The OpenAI/vLLM error envelope."""
    kind = kind or {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


# --------------------------------------------------------------------------------------------
# structured outputs


@dataclass(frozen=True)
class StructuredSpec:
    """What the output must be: JSON valid for ``schema``, or exactly one of ``choices``."""

    kind: str  # "json_schema" | "choice"
    schema: Mapping[str, Any] | None = None
    choices: tuple[str, ...] = ()


def _structured(body: Mapping[str, Any], limits: Limits) -> StructuredSpec | None:
    """Accepts the OpenAI and the vLLM spellings; more than one constraint at once is an error.

    - ``response_format: {"type": "json_schema", "json_schema": {"schema": {...}}}`` (OpenAI);
    - ``structured_outputs: {"json": {...}}`` or ``{"choice": [...]}`` (vLLM >= 0.11);
    - ``guided_json: {...}`` / ``guided_choice: [...]`` (older vLLM spellings).
    """
    found: list[tuple[str, StructuredSpec]] = []
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, Mapping):
            raise RequestError("response_format must be an object", "response_format")
        kind = fmt.get("type")
        if kind == "json_schema":
            inner = fmt.get("json_schema")
            if not isinstance(inner, Mapping) or not isinstance(inner.get("schema"), Mapping):
                raise RequestError("response_format.json_schema.schema must be an object", "response_format")
            found.append(("response_format", StructuredSpec("json_schema", schema=dict(inner["schema"]))))
        elif kind != "text":
            raise RequestError(
                f"response_format type {kind!r} is not supported (use json_schema or text)", "response_format"
            )
    outputs = body.get("structured_outputs")
    if outputs is not None:
        if not isinstance(outputs, Mapping):
            raise RequestError("structured_outputs must be an object", "structured_outputs")
        keys = [k for k in ("json", "choice") if outputs.get(k) is not None]
        unknown = [k for k in outputs if k not in {"json", "choice"} and outputs[k] not in (None, False)]
        if unknown:
            message = f"structured_outputs.{unknown[0]} is not supported (use json or choice)"
            raise RequestError(message, "structured_outputs")
        for key in keys:
            if key == "json":
                found.append(("structured_outputs", _json_spec(outputs["json"], "structured_outputs.json")))
            else:
                spec = _choice_spec(outputs["choice"], "structured_outputs.choice", limits)
                found.append(("structured_outputs", spec))
    if body.get("guided_json") is not None:
        found.append(("guided_json", _json_spec(body["guided_json"], "guided_json")))
    if body.get("guided_choice") is not None:
        found.append(("guided_choice", _choice_spec(body["guided_choice"], "guided_choice", limits)))
    if len(found) > 1:
        raise RequestError("only one structured-output constraint may be given per request", found[1][0])
    if not found:
        return None
    spec = found[0][1]
    if spec.schema is not None:
        # Compiled here so that an unsupported schema is a 400 before any model work starts.
        from dsbd.constrained import SchemaError, compile_schema

        try:
            compile_schema(spec.schema, max_properties=limits.max_schema_properties)
        except SchemaError as exc:
            raise RequestError(f"unsupported JSON schema: {exc}", found[0][0]) from None
    return spec


def _json_spec(value: Any, param: str) -> StructuredSpec:
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise RequestError(f"{param} must be a JSON schema object", param) from None
    if not isinstance(value, Mapping):
        raise RequestError(f"{param} must be a JSON schema object", param)
    return StructuredSpec("json_schema", schema=dict(value))


def _choice_spec(value: Any, param: str, limits: Limits) -> StructuredSpec:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise RequestError(f"{param} must be a non-empty list of non-empty strings", param)
    if len(value) > limits.max_choices:
        raise RequestError(f"{param} may list at most {limits.max_choices} choices", param)
    if any(len(c) > limits.max_choice_chars for c in value):
        raise RequestError(f"each of {param} may be at most {limits.max_choice_chars} characters", param)
    return StructuredSpec("choice", choices=tuple(dict.fromkeys(value)))


# --------------------------------------------------------------------------------------------
# the parsed request


@dataclass(frozen=True)
class DecodeRequest:
    """One generation request, whatever endpoint it came from."""

    endpoint: str  # "dsbd" | "completions" | "chat"
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    messages: tuple[Mapping[str, str], ...] | None = None
    model: str | None = None
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    length_penalty: float = 1.0
    seed: int | None = None
    use_dsbd: bool = True
    gamma: int = 4
    width_threshold: float = 0.7
    min_width: int = 1
    max_width: int | None = None
    structured: StructuredSpec | None = None
    stop: tuple[str, ...] = ()
    max_tokens_given: bool = False

    def beam_params(self, eos_token_id: int | None) -> BeamParams:
        return BeamParams(
            width=self.n,
            max_tokens=self.max_tokens,
            temperature=self.temperature,  # 0: greedy beam search (dsbd.sampling)
            top_k=self.top_k,
            top_p=self.top_p,
            length_penalty=self.length_penalty,
            eos_token_id=eos_token_id,
        )

    def dsbd_params(self) -> DSBDParams | None:
        if not self.use_dsbd:
            return None
        return DSBDParams(
            gamma=self.gamma, min_width=self.min_width, max_width=self.max_width, threshold=self.width_threshold
        )


_MISSING = object()


def _int(body: Mapping[str, Any], name: str, default: Any, lo: int, hi: int | None = None) -> Any:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(f"{name} must be an integer", name)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise RequestError(f"{name} must be {bound}, got {value}", name)
    return value


def _float(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number", name)
    value = float(value)
    if value > hi or value < lo or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise RequestError(f"{name} must be in {left}{lo}, {hi}], got {value}", name)
    return value


def _bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false", name)
    return value


def _common(body: Any, endpoint: str, limits: Limits, *, n: int, max_tokens: int) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    if body.get("stream"):
        raise RequestError("stream is not supported by this endpoint", "stream")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model must be a string", "model")
    top_k = _int(body, "top_k", 0, -1)
    seed = _int(body, "seed", None, -(2**63), 2**63 - 1)
    min_width = _int(body, "min_width", 1, 1, limits.max_n)
    max_width = _int(body, "max_width", None, 1, limits.max_n)
    if max_width is not None and max_width < min_width:
        raise RequestError(f"max_width ({max_width}) must be >= min_width ({min_width})", "max_width")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str) and stop:
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= limits.max_stop:
        stops = tuple(stop)
    else:
        raise RequestError(f"stop must be a non-empty string or a list of at most {limits.max_stop}", "stop")
    return {
        "endpoint": endpoint,
        "model": model,
        "n": _int(body, "n", n, 1, limits.max_n),
        "max_tokens": _int(body, "max_tokens", max_tokens, 1, limits.max_tokens),
        "max_tokens_given": body.get("max_tokens") is not None,
        "temperature": _float(body, "temperature", 1.0, 0.0, 2.0),
        "top_k": 0 if top_k == -1 else top_k,
        "top_p": _float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "length_penalty": _float(body, "length_penalty", 1.0, 0.0, 10.0),
        "seed": seed,
        "use_dsbd": _bool(body, "dsbd", True),
        "gamma": _int(body, "gamma", 4, 1, limits.max_gamma),
        "width_threshold": _float(body, "width_threshold", 0.7, 0.0, 1.0),
        "min_width": min_width,
        "max_width": max_width,
        "structured": _structured(body, limits),
        "stop": stops,
    }


def _prompt_fields(body: Mapping[str, Any], limits: Limits, *, allow_messages: bool) -> dict[str, Any]:
    given = [k for k in ("prompt", "prompt_token_ids", "messages") if body.get(k) is not None]
    if not allow_messages and "messages" in given:
        given.remove("messages")
    if len(given) != 1:
        names = "prompt, prompt_token_ids or messages" if allow_messages else "prompt or prompt_token_ids"
        raise RequestError(f"exactly one of {names} is required", given[1] if given else "prompt")
    key = given[0]
    value = body[key]
    if key == "prompt":
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]  # OpenAI allows a batch of prompts; one is what this server runs
        if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return {"prompt_token_ids": _token_ids(value, "prompt", limits)}
        if not isinstance(value, str):
            raise RequestError("prompt must be a string (or a list of token ids)", "prompt")
        if len(value) > limits.max_prompt_chars:
            raise RequestError(f"prompt is longer than {limits.max_prompt_chars} characters", "prompt")
        return {"prompt": value}
    if key == "prompt_token_ids":
        return {"prompt_token_ids": _token_ids(value, key, limits)}
    return {"messages": parse_messages(value, limits)}


def _token_ids(value: Any, param: str, limits: Limits) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise RequestError(f"{param} must be a non-empty list of token ids", param)
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
        raise RequestError(f"{param} must contain non-negative integers only", param)
    if len(value) > limits.max_prompt_tokens:
        raise RequestError(f"{param} is longer than {limits.max_prompt_tokens} tokens", param)
    return tuple(value)


def parse_messages(value: Any, limits: Limits) -> tuple[Mapping[str, str], ...]:
    """Chat messages: roles system/user/assistant; content a string or a list of text parts."""
    if not isinstance(value, list) or not value:
        raise RequestError("messages must be a non-empty list", "messages")
    if len(value) > limits.max_messages:
        raise RequestError(f"messages may hold at most {limits.max_messages} entries", "messages")
    out: list[Mapping[str, str]] = []
    total = 0
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise RequestError(f"messages[{i}] must be an object", "messages")
        role = message.get("role")
        if role not in {"system", "user", "assistant"}:
            raise RequestError(f"messages[{i}].role must be system, user or assistant", "messages")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise RequestError(f"messages[{i}].content parts must be text parts", "messages")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string", "messages")
        total += len(content)
        out.append({"role": str(role), "content": content})
    if total > limits.max_prompt_chars:
        raise RequestError(f"messages are longer than {limits.max_prompt_chars} characters in all", "messages")
    return tuple(out)


def parse_dsbd_request(body: Any, limits: Limits = DEFAULT_LIMITS) -> DecodeRequest:
    """The DSBD route: ``n`` (beam width W) defaults to 4 and ``max_tokens`` to 64."""
    fields = _common(body, "dsbd", limits, n=4, max_tokens=64)
    fields.update(_prompt_fields(body, limits, allow_messages=True))
    return DecodeRequest(**fields)


def parse_completion_request(body: Any, limits: Limits = DEFAULT_LIMITS) -> DecodeRequest:
    fields = _common(body, "completions", limits, n=1, max_tokens=16)
    if body.get("echo") or body.get("logprobs") or body.get("suffix"):
        name = next(k for k in ("echo", "logprobs", "suffix") if body.get(k))
        raise RequestError(f"{name} is not supported by this server", name)
    fields.update(_prompt_fields(body, limits, allow_messages=False))
    return DecodeRequest(**fields)


def parse_chat_request(body: Any, limits: Limits = DEFAULT_LIMITS) -> DecodeRequest:
    fields = _common(body, "chat", limits, n=1, max_tokens=256)
    if body.get("logprobs") or body.get("tools"):
        name = "logprobs" if body.get("logprobs") else "tools"
        raise RequestError(f"{name} is not supported by this server", name)
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is None:
        fields["max_tokens"] = _int(body, "max_completion_tokens", 256, 1, limits.max_tokens)
        fields["max_tokens_given"] = True
    fields["messages"] = parse_messages(body.get("messages"), limits)
    return DecodeRequest(**fields)


def render_chat(messages: Sequence[Mapping[str, str]]) -> str:
    """The plain chat template used when the tokenizer brings none: role tags, then the reply slot."""
    lines = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
    return "".join(lines) + "<|assistant|>\n"


# --------------------------------------------------------------------------------------------
# responses


@dataclass(frozen=True)
class DecodedBeam:
    text: str
    token_ids: tuple[int, ...]
    logprob: float
    score: float
    finished: bool
    finish_reason: str  # "stop" | "length"


@dataclass
class Decoded:
    """What the engine answered for one request, before it is rendered for an endpoint."""

    beams: list[DecodedBeam]
    result: BeamResult
    prompt_tokens: int
    model: str
    elapsed_s: float = 0.0
    created: int = field(default_factory=lambda: int(time.time()))


def apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string (OpenAI semantics: the stop string is not returned)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _usage(decoded: Decoded, count: int) -> dict[str, int]:
    completion = sum(len(b.token_ids) for b in decoded.beams[:count])
    return {
        "prompt_tokens": decoded.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": decoded.prompt_tokens + completion,
    }


def stats_body(decoded: Decoded) -> dict[str, Any]:
    s = decoded.result.stats
    return {
        "target_forward_passes": s.target_forward_passes,
        "draft_forward_passes": s.draft_forward_passes,
        "iterations": s.iterations,
        "accepted_tokens": s.accepted_tokens,
        "generated_tokens": s.generated_tokens,
        "widths": list(s.widths),
        "elapsed_ms": round(decoded.elapsed_s * 1000.0, 3),
    }


def _finite(x: float) -> float | None:
    """JSON has no -inf: a beam the target gives zero probability reports null."""
    return float(x) if math.isfinite(x) else None


def dsbd_response(decoded: Decoded) -> dict[str, Any]:
    return {
        "id": f"dsbd-{secrets.token_hex(12)}",
        "object": "dsbd.completion",
        "created": decoded.created,
        "model": decoded.model,
        "beams": [
            {
                "index": i,
                "text": b.text,
                "token_ids": list(b.token_ids),
                "logprob": _finite(b.logprob),
                "score": _finite(b.score),
                "finished": b.finished,
                "finish_reason": b.finish_reason,
            }
            for i, b in enumerate(decoded.beams)
        ],
        "stats": stats_body(decoded),
        "usage": _usage(decoded, len(decoded.beams)),
    }


def completion_response(decoded: Decoded, n: int) -> dict[str, Any]:
    return {
        "id": f"cmpl-{secrets.token_hex(12)}",
        "object": "text_completion",
        "created": decoded.created,
        "model": decoded.model,
        "choices": [
            {"index": i, "text": b.text, "logprobs": None, "finish_reason": b.finish_reason}
            for i, b in enumerate(decoded.beams[:n])
        ],
        "usage": _usage(decoded, n),
        "dsbd": stats_body(decoded),
    }


def chat_response(decoded: Decoded, n: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": decoded.created,
        "model": decoded.model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": b.text},
                "logprobs": None,
                "finish_reason": b.finish_reason,
            }
            for i, b in enumerate(decoded.beams[:n])
        ],
        "usage": _usage(decoded, n),
        "dsbd": stats_body(decoded),
    }


def models_response(model: str, created: int, max_model_len: int | None = None) -> dict[str, Any]:
    card: dict[str, Any] = {"id": model, "object": "model", "created": created, "owned_by": "oncotwin"}
    if max_model_len is not None:
        card["max_model_len"] = max_model_len
    return {"object": "list", "data": [card]}
