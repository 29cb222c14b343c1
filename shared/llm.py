"""One client for the OpenAI-compatible LLM endpoint (vLLM + the dsbd plugin, or the CPU dev server).

Twins use it to judge and summarise free text; they never wait on it for a decision that coded
data can make. What it guarantees:

- structured outputs: ``chat_json`` / ``beams_json`` constrain the answer to a JSON schema
  (``response_format: json_schema``) and return parsed objects;
- a timeout on every attempt (``LLM_TIMEOUT_SECONDS``);
- bounded retries (``LLM_MAX_RETRIES``, default 2 from the environment) with exponential backoff
  and full jitter, only for connection errors, timeouts, 429 and 5xx; ``Retry-After`` (seconds or an
  HTTP date) is honoured up to the backoff cap (urllib3's ``Retry``, shared/http_retry.py);
- a circuit breaker per endpoint: after ``LLM_BREAKER_FAILURES`` (5) failed calls in a row it
  opens and calls fail at once; after ``LLM_BREAKER_COOLDOWN_SECONDS`` (30) one trial call is let
  through (half-open): success closes it, failure opens it again;
- ``LLMUnavailable`` (an ``UpstreamError``, HTTP 503) when the breaker is open or every attempt
  failed; twins turn it into ``needs-review``. Other ``UpstreamError``s mean the endpoint answered
  but not usefully (4xx, no JSON).

Settings (fields of ``shared.config.Settings``, validated at start): ``LLM_BASE_URL`` (unset: no LLM),
``LLM_MODEL``, ``LLM_API_KEY``, ``LLM_TIMEOUT_SECONDS``, ``LLM_MAX_RETRIES``, ``LLM_DSBD`` (true: jury
votes from the DSBD route's W beams), ``LLM_BREAKER_FAILURES``, ``LLM_BREAKER_COOLDOWN_SECONDS``.

A client built directly (``LLMClient(url, model)``) makes one attempt per call and has its own
breaker; ``from_settings`` shares one breaker per base URL across the clients of a process, because
some callers build a client per request.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from shared.config import Settings, load_settings
from shared.errors import UpstreamError
from shared.http_retry import RetryPolicy, session_with_retries, timed_out

DSBD_ROUTE = "/plugins/dsbd/v1/completions"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class LLMUnavailable(UpstreamError):
    """The LLM endpoint cannot be used now (breaker open, or every attempt failed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503)


class CircuitBreaker:
    """Closed -> (``failure_threshold`` failed calls in a row) -> open -> (``cooldown_s``) -> half-open.

    Half-open lets exactly one trial call through; its success closes the breaker, its failure
    re-opens it for another cool-down. ``clock`` is injectable so tests never sleep.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(
        self, failure_threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1 or cooldown_s < 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s >= 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return self.CLOSED
        if self.clock() - self._opened_at >= self.cooldown_s:
            return self.HALF_OPEN
        return self.OPEN

    def allow(self) -> bool:
        """May a call start now? In half-open, only the first caller gets the trial."""
        with self._lock:
            state = self._state()
            if state == self.CLOSED:
                return True
            if state == self.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial_in_flight or self._failures >= self.failure_threshold:
                self._opened_at = self.clock()
            self._trial_in_flight = False

    def release(self) -> None:
        """A call ended without telling anything about the endpoint's health (e.g. a local error)."""
        with self._lock:
            self._trial_in_flight = False


_BREAKERS: dict[tuple[str, int, float], CircuitBreaker] = {}
_BREAKERS_LOCK = threading.Lock()


def shared_breaker(base_url: str, failure_threshold: int = 5, cooldown_s: float = 30.0) -> CircuitBreaker:
    """The process-wide breaker of one endpoint (clients rebuilt per request still share its state)."""
    key = (base_url, failure_threshold, cooldown_s)
    with _BREAKERS_LOCK:
        if key not in _BREAKERS:
            _BREAKERS[key] = CircuitBreaker(failure_threshold, cooldown_s)
        return _BREAKERS[key]


@dataclass(frozen=True)
class BeamOut:
    """One beam of the DSBD route, best first."""

    text: str
    token_ids: tuple[int, ...]
    logprob: float | None
    score: float | None
    finished: bool


@dataclass(frozen=True)
class Beams:
    beams: list[BeamOut]
    stats: dict[str, Any]
    model: str | None


def _schema_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": dict(schema)}}


@dataclass(frozen=True)
class LLMClient:
    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 20.0
    max_retries: int = 0  # retries after the first attempt; from_settings: LLM_MAX_RETRIES (default 2)
    use_dsbd: bool = False  # jury votes from one DSBD call's W beams
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker, compare=False, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMClient | None:
        """The configured client (``LLM_*``, validated by ``load_settings``), or None without ``LLM_BASE_URL``."""
        base = settings.llm_base_url
        if not base:
            return None
        return cls(
            base,
            settings.llm_model,
            settings.llm_api_key,
            settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            use_dsbd=settings.llm_dsbd,
            breaker=shared_breaker(base, settings.llm_breaker_failures, settings.llm_breaker_cooldown_s),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LLMClient | None:
        """``from_settings(load_settings(env))``: for callers without a Settings at hand (the CLI)."""
        return cls.from_settings(load_settings(env))

    # -- transport ----------------------------------------------------------------------------
    def retry_policy(self) -> RetryPolicy:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]; a Retry-After (either form) raises the
        floor, up to the backoff cap."""
        return RetryPolicy(
            self.max_retries,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"POST"}),  # the completion calls are read-only on the server
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            full_jitter=True,
            max_retry_after_s=self.backoff_max_s,
            sleep_fn=self.sleep,
            rng=self.rng,
            label="LLM",
        )

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST JSON with retries and the breaker; the parsed JSON object of a 200 answer."""
        if not self.breaker.allow():
            raise LLMUnavailable("LLM endpoint unavailable (circuit open after repeated failures)")
        try:
            return self._attempts(path, body)
        except LLMUnavailable:
            self.breaker.record_failure()
            raise
        except UpstreamError:
            raise  # it answered (4xx, or not JSON): the breaker already counted it as up
        except BaseException:
            self.breaker.release()  # a local failure says nothing about the endpoint
            raise

    def _attempts(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        tries = self.max_retries + 1
        attempts = f"{tries} attempt{'s' if tries > 1 else ''}"
        try:
            with session_with_retries(self.retry_policy()) as session:
                response = session.post(f"{self.base_url}{path}", json=body, headers=headers, timeout=self.timeout_s)
        except requests.RequestException as exc:
            problem = "timed out" if timed_out(exc) else f"unreachable ({exc.__class__.__name__})"
            raise LLMUnavailable(f"LLM endpoint {problem} ({attempts})") from None
        if response.status_code in RETRY_STATUSES:
            raise LLMUnavailable(f"LLM endpoint answered {response.status_code} ({attempts})")
        self.breaker.record_success()  # it answered: whatever it said, it is up
        if response.status_code != 200:
            raise UpstreamError(f"LLM endpoint answered {response.status_code}", status=502)
        try:
            data = response.json()
        except ValueError:
            raise UpstreamError("LLM endpoint returned no JSON", status=502) from None
        if not isinstance(data, dict):
            raise UpstreamError("LLM endpoint returned no JSON object", status=502)
        return data

    # -- OpenAI-compatible ----------------------------------------------------------------------
    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        seed: int | None = None,
        schema: Mapping[str, Any] | None = None,
        choices: Sequence[str] | None = None,
    ) -> list[str]:
        """The contents of ``n`` chat completions (structured when ``schema`` or ``choices`` is given)."""
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "temperature": temperature}
        if n != 1:
            body["n"] = n
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if seed is not None:
            body["seed"] = seed
        if schema is not None:
            body["response_format"] = _schema_format(schema)
        if choices is not None:
            body["structured_outputs"] = {"choice": list(choices)}
        data = self.post("/v1/chat/completions", body)
        try:
            return [str(choice["message"]["content"]) for choice in data["choices"]]
        except (KeyError, TypeError):
            raise UpstreamError("LLM endpoint returned no chat choices", status=502) from None

    def complete(
        self, prompt: str, *, n: int = 1, temperature: float = 0.0, max_tokens: int = 64, seed: int | None = None
    ) -> list[str]:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "temperature": temperature, "n": n}
        body["max_tokens"] = max_tokens
        if seed is not None:
            body["seed"] = seed
        data = self.post("/v1/completions", body)
        try:
            return [str(choice["text"]) for choice in data["choices"]]
        except (KeyError, TypeError):
            raise UpstreamError("LLM endpoint returned no completion choices", status=502) from None

    def chat_json(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        *,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """One chat completion constrained to ``schema`` (vLLM structured outputs); the parsed JSON."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "response_format": _schema_format(schema),
        }
        if seed is not None:
            body["seed"] = seed
        data = self.post("/v1/chat/completions", body)
        try:
            answer = json.loads(data["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamError("LLM endpoint returned no JSON answer", status=502) from None
        if not isinstance(answer, dict):
            raise UpstreamError("LLM endpoint returned no JSON object", status=502)
        return answer

    # -- the DSBD route -------------------------------------------------------------------------
    def beams(
        self,
        prompt: str | None = None,
        n: int = 4,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        length_penalty: float = 1.0,
        gamma: int | None = None,
        width_threshold: float | None = None,
        min_width: int | None = None,
        max_width: int | None = None,
        seed: int | None = None,
        schema: Mapping[str, Any] | None = None,
        choices: Sequence[str] | None = None,
    ) -> Beams:
        """W = ``n`` candidates from one DSBD call (``prompt`` or chat ``messages``), best first."""
        if (prompt is None) == (messages is None):
            raise ValueError("give exactly one of prompt or messages")
        body: dict[str, Any] = {"model": self.model, "n": n, "temperature": temperature}
        body.update({"prompt": prompt} if prompt is not None else {"messages": list(messages or [])})
        optional = {
            "max_tokens": max_tokens,
            "top_k": top_k or None,
            "top_p": top_p if top_p < 1.0 else None,
            "length_penalty": length_penalty if length_penalty != 1.0 else None,
            "gamma": gamma,
            "width_threshold": width_threshold,
            "min_width": min_width,
            "max_width": max_width,
            "seed": seed,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if schema is not None:
            body["response_format"] = _schema_format(schema)
        if choices is not None:
            body["structured_outputs"] = {"choice": list(choices)}
        data = self.post(DSBD_ROUTE, body)
        try:
            beams = [
                BeamOut(
                    str(b["text"]),
                    tuple(int(t) for t in b.get("token_ids") or ()),
                    b.get("logprob"),
                    b.get("score"),
                    bool(b.get("finished")),
                )
                for b in data["beams"]
            ]
        except (KeyError, TypeError, ValueError):
            raise UpstreamError("LLM endpoint returned no beams", status=502) from None
        return Beams(beams, dict(data.get("stats") or {}), data.get("model"))

    def beams_json(
        self,
        messages: Sequence[Mapping[str, str]],
        schema: Mapping[str, Any],
        n: int,
        *,
        temperature: float = 1.0,
        seed: int | None = None,
        max_tokens: int | None = None,
    ) -> list[dict[str, Any] | None]:
        """Each of the W beams parsed as a JSON object for ``schema``; None for a beam that is not one."""
        result = self.beams(
            messages=messages, n=n, temperature=temperature, seed=seed, max_tokens=max_tokens, schema=schema
        )
        out: list[dict[str, Any] | None] = []
        for beam in result.beams:
            try:
                value = json.loads(beam.text)
            except ValueError:
                value = None
            out.append(value if isinstance(value, dict) else None)
        return out
