"""One client for the OpenAI-compatible endpoint (vLLM) that twins use to judge free text.

Always a structured output (a JSON schema), a timeout, and no retry storms: a failure raises
``UpstreamError`` and the caller falls back to its deterministic answer. Configured by
``LLM_BASE_URL`` (unset: no LLM), ``LLM_MODEL``, ``LLM_API_KEY``, ``LLM_TIMEOUT_SECONDS``.
The LLM backend issue extends this client (streaming, the decoding plugin's parameters).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from shared.errors import UpstreamError


@dataclass(frozen=True)
class LLMClient:
    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 20.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LLMClient | None:
        base = (env.get("LLM_BASE_URL") or "").rstrip("/")
        if not base:
            return None
        timeout = float(env.get("LLM_TIMEOUT_SECONDS") or 20.0)
        return cls(base, env.get("LLM_MODEL") or "oncotwin-judge", env.get("LLM_API_KEY") or None, timeout)

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
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        }
        if seed is not None:
            body["seed"] = seed
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = requests.post(
                f"{self.base_url}/v1/chat/completions", json=body, headers=headers, timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            raise UpstreamError(f"LLM endpoint unreachable ({exc.__class__.__name__})", status=503) from None
        if response.status_code != 200:
            raise UpstreamError(f"LLM endpoint answered {response.status_code}", status=502)
        try:
            content = response.json()["choices"][0]["message"]["content"]
            answer = json.loads(content)
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamError("LLM endpoint returned no JSON answer", status=502) from None
        if not isinstance(answer, dict):
            raise UpstreamError("LLM endpoint returned no JSON object", status=502)
        return answer
