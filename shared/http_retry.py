"""The one retry policy of the outbound HTTP clients (FHIR server, LLM endpoint).

It is urllib3's ``Retry``, mounted on a ``requests.Session`` through an ``HTTPAdapter``
(:func:`session_with_retries`), so the retry loop itself is urllib3's. :class:`RetryPolicy` adds what
the clients need on top:

- the backoff before retry ``n`` (0-based) is ``backoff_base_s * 2**n``, either with up to +50% jitter
  (``full_jitter=False``: successive delays always grow) or drawn uniformly from ``[0, that]``
  (``full_jitter=True``, "full jitter"), capped at ``backoff_max_s`` when given;
- ``Retry-After`` is honoured in both forms (delta-seconds and HTTP-date, parsed by urllib3) as a floor
  under the backoff. A wait longer than ``max_retry_after_s`` is either capped to it or, with
  ``give_up_on_long_retry_after``, not waited for at all: the response is returned as is;
- only the statuses in ``status_forcelist`` are retried (no implicit 413 on ``Retry-After``), and the
  last response is returned rather than raised when retries run out (``raise_on_status=False``);
- ``sleep`` and ``rng`` are injectable, so tests record delays instead of sleeping.

Connection errors and read timeouts are retried for ``allowed_methods``; when retries run out requests
raises ``ConnectionError`` (see :func:`timed_out` to tell a timeout from a refused connection).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    InvalidHeader,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

logger = logging.getLogger(__name__)

_EXTRA = (
    "backoff_base_s",
    "backoff_max_s",
    "full_jitter",
    "max_retry_after_s",
    "give_up_on_long_retry_after",
    "sleep_fn",
    "rng",
    "label",
)


class RetryPolicy(Retry):
    """urllib3's ``Retry`` with the project's backoff, ``Retry-After`` handling and injectable sleep."""

    def __init__(
        self,
        total: int = 0,
        *,
        backoff_base_s: float = 0.5,
        backoff_max_s: float | None = None,
        full_jitter: bool = False,
        max_retry_after_s: float | None = None,
        give_up_on_long_retry_after: bool = False,
        sleep_fn: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        label: str = "HTTP",
        **kw: Any,
    ) -> None:
        kw.setdefault("raise_on_status", False)
        kw.setdefault("raise_on_redirect", False)
        kw.setdefault("redirect", False)
        super().__init__(total=total, **kw)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.full_jitter = full_jitter
        self.max_retry_after_s = max_retry_after_s
        self.give_up_on_long_retry_after = give_up_on_long_retry_after
        self.sleep_fn = sleep_fn
        self.rng = rng if rng is not None else random.Random()  # noqa: S311 - timing jitter, not cryptography
        self.label = label

    def new(self, **kw: Any) -> RetryPolicy:
        for name in _EXTRA:
            kw.setdefault(name, getattr(self, name))
        return super().new(**kw)

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        return self._is_method_retryable(method) and status_code in (self.status_forcelist or ())

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        """Seconds ``Retry-After`` asks for (either form); None when absent or unreadable."""
        try:
            return super().get_retry_after(response)
        except InvalidHeader:
            return None

    def backoff_s(self, retry: int) -> float:
        """The delay before retry ``retry`` (0-based), without ``Retry-After``."""
        base = self.backoff_base_s * (2**retry)
        if self.backoff_max_s is not None:
            base = min(base, self.backoff_max_s)
        if self.full_jitter:
            return self.rng.uniform(0.0, base)
        return base + self.rng.uniform(0.0, base / 2)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        *args: Any,
        **kw: Any,
    ) -> RetryPolicy:
        if response is not None and self.give_up_on_long_retry_after and self.max_retry_after_s is not None:
            wait = self.get_retry_after(response)
            if wait is not None and wait > self.max_retry_after_s:
                # longer than we are willing to hold a request: the response goes back as it is
                reason = ResponseError(f"Retry-After {wait:.0f} s is too long")
                raise MaxRetryError(kw.get("_pool"), url or "", reason)  # type: ignore[arg-type] # as urllib3 does
        return super().increment(method, url, response, *args, **kw)

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        retry = max(len(self.history) - 1, 0)
        delay = self.backoff_s(retry)
        wait = self.get_retry_after(response) if response is not None else None
        if wait is not None:
            if self.max_retry_after_s is not None:
                wait = min(wait, self.max_retry_after_s)
            delay = max(delay, wait)
        last = self.history[-1] if self.history else None
        reason = f"HTTP {last.status}" if last is not None and last.status else "no answer"
        logger.warning("%s request failed (%s); retry %d in %.2f s", self.label, reason, retry + 1, delay)
        self.sleep_fn(delay)


def session_with_retries(policy: RetryPolicy, session: requests.Session | None = None) -> requests.Session:
    """``session`` (or a new one) with ``policy`` mounted for http and https."""
    session = session if session is not None else requests.Session()
    adapter = HTTPAdapter(max_retries=policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def timed_out(exc: requests.RequestException) -> bool:
    """Was this (possibly retried-out) request error a timeout rather than a refused connection?"""
    if isinstance(exc, requests.Timeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(reason, NewConnectionError):  # a subclass of ConnectTimeoutError: refused, unresolvable
        return False
    return isinstance(reason, ReadTimeoutError | ConnectTimeoutError)
