"""One decode pipeline behind both front ends: prompt -> token ids -> W beams -> text.

Why shared: the dev server (``dsbd.serve``, Flask, CPU) and the vLLM plugin (``dsbd.vllm_plugin``,
FastAPI, target scored by vLLM) differ only in where the target's log-probabilities come from.
Tokenising, chat rendering, limits, constrained decoding, stop strings and detokenising are the
same code, so both answer the same request with the same JSON.

``DecodeService.run`` is synchronous (the decoding core is); the plugin runs it in a worker thread.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

from dsbd.api import Generator, NextTokenModel
from dsbd.constrained import TokenConstraint, TokenVocabulary, constrain, constraint_for
from dsbd.protocol import (
    DEFAULT_LIMITS,
    Decoded,
    DecodedBeam,
    DecodeRequest,
    Limits,
    RequestError,
    apply_stop,
    render_chat,
)

GeneratorFactory = Callable[[NextTokenModel, NextTokenModel | None], Generator]


class DecodeService:
    """Holds the tokenizer, the two models and a generator factory; turns requests into ``Decoded``.

    ``generator_factory(target, draft)`` is called per request because constrained requests wrap
    both models (``dsbd.constrained.constrain``); unconstrained requests reuse one generator.
    ``lock`` serialises decoding where the models are not safe to share between threads (the
    CPU dev server, whose backends keep a KV cache); the plugin passes none and
    ``share_generator=False``: its models are stateless, so each request gets its own generator
    (a generator serialises its own calls) and requests decode concurrently.
    """

    def __init__(
        self,
        tokenizer: Any,
        target: NextTokenModel,
        draft: NextTokenModel | None,
        generator_factory: GeneratorFactory,
        model_name: str,
        *,
        limits: Limits = DEFAULT_LIMITS,
        max_model_len: int | None = None,
        lock: AbstractContextManager[Any] | None = None,
        share_generator: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.target = target
        self.draft = draft
        self.generator_factory = generator_factory
        self.model_name = model_name
        self.limits = limits
        self.max_model_len = max_model_len
        self._lock = lock if lock is not None else nullcontext()
        self.share_generator = share_generator
        self._plain: Generator | None = None
        self._vocab: TokenVocabulary | None = None
        self._vocab_lock = threading.Lock()
        self.eos_token_id: int | None = getattr(tokenizer, "eos_token_id", None)
        self.created = int(time.time())

    # -- prompt -------------------------------------------------------------------------------
    def prompt_text(self, req: DecodeRequest) -> str | None:
        if req.messages is not None:
            template = getattr(self.tokenizer, "chat_template", None)
            if template:
                messages = list(req.messages)
                return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            return render_chat(req.messages)
        return req.prompt

    def prompt_ids(self, req: DecodeRequest) -> list[int]:
        """Token ids of the prompt, starting with BOS when the tokenizer has one (the decoders need a
        non-empty prompt whose first token every sequence shares)."""
        if req.prompt_token_ids is not None:
            ids = list(req.prompt_token_ids)
            vocab = self.target.vocab_size
            if any(t >= vocab for t in ids):
                raise RequestError(f"prompt_token_ids must be < the vocabulary size ({vocab})", "prompt_token_ids")
        else:
            text = self.prompt_text(req) or ""
            ids = list(self.tokenizer.encode(text, add_special_tokens=True))
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        if not ids:
            raise RequestError("the prompt is empty", "prompt")
        if len(ids) > self.limits.max_prompt_tokens:
            raise RequestError(f"the prompt is {len(ids)} tokens; at most {self.limits.max_prompt_tokens}", "prompt")
        return ids

    # -- constraint ---------------------------------------------------------------------------
    @property
    def vocab(self) -> TokenVocabulary:
        with self._vocab_lock:
            if self._vocab is None:
                self._vocab = TokenVocabulary.from_tokenizer(self.tokenizer, self.target.vocab_size)
            return self._vocab

    def constraint(self, req: DecodeRequest) -> TokenConstraint | None:
        spec = req.structured
        if spec is None:
            return None
        if req.stop:
            raise RequestError("stop cannot be combined with a structured-output constraint", "stop")
        if self.eos_token_id is None:
            raise RequestError("structured outputs need a tokenizer with an EOS token", "response_format")
        return constraint_for(spec.kind, self.vocab, schema=spec.schema, choices=spec.choices)

    def _budget(self, req: DecodeRequest, prompt_len: int, constraint: TokenConstraint | None) -> DecodeRequest:
        """Fit max_tokens: a defaulted value shrinks to the context left after the prompt and grows
        to the shortest valid structured answer; an explicit value that does not fit is a 400."""
        room = None if self.max_model_len is None else self.max_model_len - prompt_len
        need = constraint.min_tokens() if constraint is not None else 1
        max_tokens = req.max_tokens
        if not req.max_tokens_given:
            if room is not None:
                max_tokens = min(max_tokens, room)
            max_tokens = max(max_tokens, min(need, self.limits.max_tokens))
        if room is not None and max_tokens > room:
            raise RequestError(
                f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceed the model's "
                f"context of {self.max_model_len} tokens",
                "max_tokens",
            )
        if max_tokens < need:
            raise RequestError(f"max_tokens must be at least {need} for this structured output", "max_tokens")
        return req if max_tokens == req.max_tokens else replace(req, max_tokens=max_tokens)

    # -- decode -------------------------------------------------------------------------------
    def generator(self, target: NextTokenModel, draft: NextTokenModel | None, constrained: bool) -> Generator:
        if constrained or not self.share_generator:
            return self.generator_factory(target, draft)
        if self._plain is None:
            self._plain = self.generator_factory(self.target, self.draft)
        return self._plain

    def run(self, req: DecodeRequest) -> Decoded:
        constraint = self.constraint(req)
        prompt = self.prompt_ids(req)
        req = self._budget(req, len(prompt), constraint)
        target: NextTokenModel = self.target
        draft = self.draft
        if constraint is not None:
            target = constrain(self.target, constraint, len(prompt), req.max_tokens)
            if draft is not None:
                draft = constrain(draft, constraint, len(prompt), req.max_tokens)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        started = time.perf_counter()
        with self._lock:
            generator = self.generator(target, draft, constraint is not None)
            result = generator.generate(prompt, req.beam_params(self.eos_token_id), req.dsbd_params(), seed)
        elapsed = time.perf_counter() - started
        beams = [self._beam(b.tokens, b.logprob, b.score, b.finished, req.stop) for b in result.beams]
        return Decoded(beams, result, len(prompt), self.model_name, elapsed)

    def _beam(
        self, tokens: Sequence[int], logprob: float, score: float, finished: bool, stops: Sequence[str]
    ) -> DecodedBeam:
        eos = self.eos_token_id
        text_ids = [t for t in tokens if t != eos]
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        stopped = False
        if stops:
            text, stopped = apply_stop(text, stops)
        reason = "stop" if finished or stopped else "length"
        return DecodedBeam(text, tuple(int(t) for t in tokens), float(logprob), float(score), finished, reason)
