"""vLLM plugin: the DSBD route on vLLM's OpenAI-compatible server, the target scored by vLLM itself.

Two entry points (``services/llm/pyproject.toml``), both named ``dsbd`` so that
``VLLM_PLUGINS=dsbd`` enables them together (endpoint plugins load ONLY when named there):

- ``vllm.general_plugins``: ``dsbd.vllm_plugin:register`` -- a zero-argument function vLLM calls
  in every process it starts; idempotent and import-light (nothing engine-side is needed);
- ``vllm.endpoint_plugins``: ``dsbd.vllm_plugin:DSBDEndpointPlugin`` -- a zero-argument factory
  returning an object with ``name``, ``required_tasks``, ``attach_router(app)`` (phase A: routes,
  before the engine exists) and ``async init_state(engine_client, state, args)`` (phase B).

The route ``POST /plugins/dsbd/v1/completions`` (``dsbd.protocol``) has its OWN bearer check
(``DSBD_API_KEY``): vLLM's ``--api-key`` does not cover plugin routes. With no key set, the route
refuses every request unless ``DSBD_ALLOW_UNAUTHENTICATED=1``.

How the target is scored: DSBD asks for next-token log-probabilities after a set of sequences
(the beams and the draft forest below them). ``VLLMScorer`` packs that set into a trie; each
root-to-leaf path becomes ONE prompt (``path + [pad]``) whose prompt log-probabilities hold the
target's full next-token distribution at every node on the path. All prompts of one call go to
vLLM at once (``EngineClient.generate`` with ``max_tokens=1``), so vLLM batches them. Two ways to
ask, chosen at start-up (``DSBD_VLLM_SCORING``: auto | prompt_logprobs | token_ids | token_id_rows):

- ``prompt_logprobs=-1`` (every vLLM in range): ``RequestOutput.prompt_logprobs[j]`` is a dict
  token id -> Logprob for the token at position j; needs ``--max-logprobs -1``;
- ``prompt_logprob_token_ids`` + ``prompt_logprob_start`` (vLLM >= 0.31, V2 model runner):
  ``RequestOutput.prompt_token_id_logprobs`` is a dense ``[rows, ids]`` float32 matrix, only for
  the forest rows (the shared user prompt is not returned). Newer releases take one id list per
  row (``token_id_rows``).

``auto`` asks the engine itself at start-up (``detect_scoring_mode``): it scores one short probe in
``prompt_logprobs`` mode (which must work: ``--max-logprobs -1``) and in each fixed-id mode this
SamplingParams declares, and keeps the first fixed-id mode whose rows equal the reference; a build
that accepts the fields but does not implement them (the V1 model runner) answers something else and
falls back to ``prompt_logprobs``. ``scoring_mode`` (annotations only) is the choice without an engine.

The draft model runs in this process (PyTorch, ``DSBD_DRAFT_MODEL``, loaded in ``init_state``).
Nothing here imports vLLM, torch or FastAPI at import time: they are imported where used.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import uuid
from argparse import Namespace
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dsbd.protocol import (
    DEFAULT_LIMITS,
    DSBD_ROUTE,
    Limits,
    RequestError,
    bearer_matches,
    dsbd_response,
    error_body,
    parse_dsbd_request,
)

# Under "vllm.": vLLM configures that logger tree, so the plugin's lines reach the server's log.
log = logging.getLogger("vllm.plugins.dsbd")

PLUGIN_NAME = "dsbd"
SCORING_MODES = ("prompt_logprobs", "token_ids", "token_id_rows")
_registered = False


def register() -> None:
    """``vllm.general_plugins`` entry: vLLM may call it in every process, any number of times."""
    global _registered
    if _registered:
        return
    _registered = True
    log.info("DSBD general plugin registered in process %d", os.getpid())
    draft = os.environ.get("DSBD_DRAFT_MODEL")
    if draft and not os.path.isdir(draft):
        log.warning("DSBD_DRAFT_MODEL=%s is not a directory: the DSBD route will decode without a draft", draft)


# --------------------------------------------------------------------------------------------
# scoring through the engine


def _fields(cls: Any) -> dict[str, str]:
    """Field name -> annotation text of a SamplingParams class (msgspec Struct or dataclass)."""
    annotations: dict[str, Any] = {}
    for klass in reversed(getattr(cls, "__mro__", (cls,))):
        annotations.update(getattr(klass, "__annotations__", {}) or {})
    names = set(getattr(cls, "__struct_fields__", ()) or ()) | set(getattr(cls, "__dataclass_fields__", {}) or {})
    names |= set(annotations)
    return {name: str(annotations.get(name, "")) for name in names}


def scoring_mode(sampling_params_cls: Any, env: dict[str, str] | None = None) -> str:
    """How to ask vLLM for full distributions (see the module docstring); ``auto`` picks the best
    the installed SamplingParams supports."""
    env = dict(os.environ) if env is None else env
    wanted = (env.get("DSBD_VLLM_SCORING") or "auto").strip().lower()
    fields = _fields(sampling_params_cls)
    if wanted in SCORING_MODES:
        if wanted != "prompt_logprobs" and "prompt_logprob_token_ids" not in fields:
            raise RuntimeError(f"DSBD_VLLM_SCORING={wanted}, but this vLLM has no prompt_logprob_token_ids")
        return wanted
    if wanted != "auto":
        raise RuntimeError(f"DSBD_VLLM_SCORING must be auto or one of {', '.join(SCORING_MODES)}, got {wanted!r}")
    if "prompt_logprob_token_ids" not in fields:
        return "prompt_logprobs"
    if (env.get("VLLM_USE_V2_MODEL_RUNNER") or "").strip().lower() not in {"1", "true", "yes"}:
        return "prompt_logprobs"  # fixed-id prompt scoring is implemented by the V2 model runner only
    annotation = fields["prompt_logprob_token_ids"].replace(" ", "")
    nested = any(s in annotation for s in ("list[list", "List[List", "ndarray", "Sequence[Sequence"))
    return "token_id_rows" if nested else "token_ids"


class _Plan:
    """Sequences packed into a trie; each leaf path is one prompt that scores every node on it."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        parent: list[int] = [-1]
        token: list[int] = [-1]
        depth: list[int] = [0]
        children: list[dict[int, int]] = [{}]
        self.nodes: list[int] = []
        for seq in sequences:
            node = 0
            for tok in seq:
                nxt = children[node].get(int(tok))
                if nxt is None:
                    nxt = len(parent)
                    children[node][int(tok)] = nxt
                    parent.append(node)
                    token.append(int(tok))
                    depth.append(depth[node] + 1)
                    children.append({})
                node = nxt
            self.nodes.append(node)
        leaf = list(range(len(parent)))  # a leaf below each node (itself when it has no child)
        for node in range(len(parent) - 1, -1, -1):
            if children[node]:
                leaf[node] = leaf[next(iter(children[node].values()))]
        self.leaves = list(dict.fromkeys(leaf[n] for n in self.nodes))
        self.chain_of = [self.leaves.index(leaf[n]) for n in self.nodes]
        self.length = [depth[n] for n in self.nodes]
        self.paths: list[list[int]] = []
        for end in self.leaves:
            path: list[int] = []
            node = end
            while node > 0:
                path.append(token[node])
                node = parent[node]
            self.paths.append(path[::-1])


class VLLMScorer:
    """Turns a set of sequences into vLLM requests and their prompt log-probabilities into rows.

    ``engine`` is anything with vLLM's documented ``generate(prompt, sampling_params, request_id)``
    returning an async iterator of ``RequestOutput`` (an ``EngineClient``/``AsyncLLM``).
    ``sampling_params_cls`` defaults to ``vllm.SamplingParams`` (imported on first use).
    """

    def __init__(
        self,
        engine: Any,
        vocab_size: int,
        *,
        sampling_params_cls: Any = None,
        mode: str | None = None,
    ) -> None:
        self.engine = engine
        self.vocab_size = vocab_size
        if sampling_params_cls is None:
            from vllm import SamplingParams

            sampling_params_cls = SamplingParams
        self.sampling_params_cls = sampling_params_cls
        self.mode = mode or scoring_mode(sampling_params_cls)
        self.requests = 0  # vLLM requests sent (one per leaf path)

    def _params(self, prompt_len: int, start: int) -> Any:
        common: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "detokenize": False}
        if self.mode == "prompt_logprobs":
            return self.sampling_params_cls(prompt_logprobs=-1, **common)
        ids: Any = list(range(self.vocab_size))
        if self.mode == "token_id_rows":
            ids = np.tile(np.arange(self.vocab_size, dtype=np.int64), (prompt_len - 1 - start, 1))
        return self.sampling_params_cls(prompt_logprob_token_ids=ids, prompt_logprob_start=start, **common)

    async def _final(self, prompt: list[int], params: Any) -> Any:
        request_id = f"dsbd-{uuid.uuid4().hex}"
        self.requests += 1
        last = None
        try:
            async for output in self.engine.generate({"prompt_token_ids": prompt}, params, request_id):
                last = output if last is None else _merge(last, output)
        except asyncio.CancelledError:  # the decode timed out or went away: free the engine's slot
            abort = getattr(self.engine, "abort", None)
            if abort is not None:
                await asyncio.shield(abort(request_id))
            raise
        if last is None:
            raise RuntimeError("the engine returned no output")
        return last

    def _dense(self, entry: Any) -> np.ndarray:
        row = np.full(self.vocab_size, -np.inf)
        if not entry:
            raise RuntimeError("the engine returned no prompt log-probabilities for a scored position")
        for tid, value in entry.items():
            if 0 <= int(tid) < self.vocab_size:
                row[int(tid)] = float(getattr(value, "logprob", value))
        return row

    async def score(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Next-token log-probabilities after each sequence: shape ``(len(sequences), vocab)``."""
        plan = _Plan(sequences)
        starts = [
            min(n for c, n in zip(plan.chain_of, plan.length, strict=True) if c == chain) - 1
            for chain in range(len(plan.paths))
        ]
        prompts = [[*path, path[-1]] for path in plan.paths]  # the pad makes the last node a prompt row
        outputs = await asyncio.gather(
            *(self._final(p, self._params(len(p), s)) for p, s in zip(prompts, starts, strict=True))
        )
        out = np.empty((len(plan.nodes), self.vocab_size))
        for i, (chain, length) in enumerate(zip(plan.chain_of, plan.length, strict=True)):
            output = outputs[chain]
            if self.mode == "prompt_logprobs":
                entries = getattr(output, "prompt_logprobs", None)
                if entries is None or len(entries) <= length:
                    raise RuntimeError("the engine returned too few prompt log-probabilities")
                out[i] = self._dense(entries[length])
            else:
                matrix = getattr(output, "prompt_token_id_logprobs", None)
                if matrix is None:
                    raise RuntimeError("the engine returned no prompt_token_id_logprobs (V2 model runner?)")
                values = np.asarray(matrix, dtype=np.float64)
                row = length - 1 - starts[chain]
                if values.ndim != 2 or not 0 <= row < values.shape[0] or values.shape[1] != self.vocab_size:
                    raise RuntimeError(f"unexpected prompt_token_id_logprobs shape {values.shape}")
                out[i] = values[row]
        return out


def _merge(previous: Any, current: Any) -> Any:
    """Streaming outputs may carry prompt data only once (DELTA): keep it on the final one."""
    for name in ("prompt_logprobs", "prompt_token_id_logprobs"):
        if getattr(current, name, None) is None and getattr(previous, name, None) is not None:
            try:
                setattr(current, name, getattr(previous, name))
            except AttributeError:
                return previous
    return current


PROBE_TOLERANCE = 1e-3  # logprob difference between two ways of asking for the same rows (float32 engine)


async def detect_scoring_mode(
    engine: Any, vocab_size: int, *, sampling_params_cls: Any = None, env: dict[str, str] | None = None
) -> str:
    """The scoring mode the running engine really implements (``DSBD_VLLM_SCORING``, default auto)."""
    env = dict(os.environ) if env is None else env
    reference_scorer = VLLMScorer(engine, vocab_size, sampling_params_cls=sampling_params_cls, mode="prompt_logprobs")
    cls = reference_scorer.sampling_params_cls
    declared = scoring_mode(cls, {**env, "VLLM_USE_V2_MODEL_RUNNER": "1"})
    if (env.get("DSBD_VLLM_SCORING") or "auto").strip().lower() != "auto":
        return declared  # an explicit choice (validated by scoring_mode) is obeyed, not probed
    token = min(1, vocab_size - 1)
    probe = [[token], [token, min(2, vocab_size - 1)]]
    try:
        reference = await reference_scorer.score(probe)
    except Exception as exc:
        raise RuntimeError(
            "the engine returned no full prompt log-probabilities; start vLLM with --max-logprobs -1"
        ) from exc
    finite = np.isfinite(reference)
    for mode in dict.fromkeys((declared, "token_id_rows", "token_ids")):
        if mode == "prompt_logprobs" or "prompt_logprob_token_ids" not in _fields(cls):
            continue
        try:
            rows = await VLLMScorer(engine, vocab_size, sampling_params_cls=cls, mode=mode).score(probe)
        except Exception as exc:  # accepted by SamplingParams, refused or unimplemented by the engine
            log.info("DSBD scoring mode %s is not available here: %s", mode, exc)
            continue
        if np.array_equal(finite, np.isfinite(rows)) and np.allclose(
            rows[finite], reference[finite], atol=PROBE_TOLERANCE
        ):
            return mode
        log.info("DSBD scoring mode %s answered other rows than prompt_logprobs: not used", mode)
    return "prompt_logprobs"


class VLLMTargetModel:
    """The synchronous ``NextTokenModel`` the decoding core sees; every call runs ``VLLMScorer.score``
    on the server's event loop (the core runs in a worker thread, see ``DSBDHandler``)."""

    def __init__(self, scorer: VLLMScorer, loop: asyncio.AbstractEventLoop, timeout_s: float = 120.0) -> None:
        self.scorer = scorer
        self.loop = loop
        self.timeout_s = timeout_s
        self.vocab_size = scorer.vocab_size

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        future = asyncio.run_coroutine_threadsafe(self.scorer.score(prefixes), self.loop)
        try:
            return future.result(timeout=self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise


class DraftView:
    """The draft as the plugin uses it: stateless ``next_logprobs`` only, vocabulary fitted to the target's.

    Stateless because concurrent requests share one draft: the torch backend's trie KV cache
    (``forest_logprobs``/``retain``) belongs to one decode at a time. Padded with -inf (or cut)
    because vLLM may pad the target's vocabulary beyond the tokenizer's.
    """

    def __init__(self, base: Any, vocab_size: int) -> None:
        self.base = base
        self.vocab_size = vocab_size

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        rows = np.asarray(self.base.next_logprobs(prefixes), dtype=np.float64)
        if rows.shape[1] >= self.vocab_size:
            return rows[:, : self.vocab_size]
        pad = np.full((rows.shape[0], self.vocab_size - rows.shape[1]), -np.inf)
        return np.concatenate([rows, pad], axis=1)


# --------------------------------------------------------------------------------------------
# the route


class DSBDHandler:
    """Request handling for the route, free of FastAPI: ``handle`` returns (status, JSON body)."""

    def __init__(
        self,
        service: Any,
        *,
        api_key: str | None,
        allow_unauthenticated: bool = False,
        limits: Limits = DEFAULT_LIMITS,
        max_concurrency: int = 4,
    ) -> None:
        self.service = service  # a dsbd.service.DecodeService whose target is a VLLMTargetModel
        self.api_key = api_key
        self.allow_unauthenticated = allow_unauthenticated
        self.limits = limits
        self._slots = asyncio.Semaphore(max_concurrency)

    def authorized(self, authorization: str | None) -> bool:
        if self.api_key is None:
            return self.allow_unauthenticated
        return bearer_matches(authorization, self.api_key)

    async def handle(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        if not self.authorized(authorization):
            return 401, error_body(401, "a valid bearer token is required (DSBD_API_KEY)")
        if len(body) > self.limits.max_body_bytes:
            return 413, error_body(413, f"the request body is larger than {self.limits.max_body_bytes} bytes")
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            return 400, error_body(400, "the request body must be JSON")
        try:
            req = parse_dsbd_request(payload, self.limits)
            async with self._slots:
                decoded = await asyncio.to_thread(self.service.run, req)
        except RequestError as exc:
            return exc.status, exc.body()
        except ValueError as exc:
            return 400, error_body(400, f"invalid decoding parameters: {exc}")
        except Exception:
            log.exception("DSBD request failed")
            return 500, error_body(500, "DSBD decoding failed", kind="server_error")
        return 200, dsbd_response(decoded)


async def engine_tokenizer(engine_client: Any) -> Any:
    """The engine's tokenizer: ``EngineClient.renderer.get_tokenizer()`` (vLLM >= 0.32, synchronous), else
    ``get_tokenizer()`` (a coroutine before 0.32, a plain method on 0.32's ``AsyncLLM``)."""
    renderer = getattr(engine_client, "renderer", None)
    if renderer is not None and callable(getattr(renderer, "get_tokenizer", None)):
        return renderer.get_tokenizer()
    tokenizer = engine_client.get_tokenizer()
    return await tokenizer if inspect.isawaitable(tokenizer) else tokenizer


async def build_handler(
    engine_client: Any,
    *,
    model_name: str,
    draft_path: str | None = None,
    env: dict[str, str] | None = None,
    sampling_params_cls: Any = None,
    load_draft: Callable[[str], Any] | None = None,
    generator_factory: Any = None,
) -> DSBDHandler:
    """Everything the route needs, from an engine client (phase B, or a test with a fake engine)."""
    from dsbd.service import DecodeService

    env = dict(os.environ) if env is None else env
    tokenizer = await engine_tokenizer(engine_client)
    model_config = getattr(engine_client, "model_config", None)
    vocab_size = None
    if model_config is not None and callable(getattr(model_config, "get_vocab_size", None)):
        vocab_size = int(model_config.get_vocab_size())
    draft = None
    if draft_path:
        if load_draft is None:
            from dsbd.serve import load_model

            load_draft = load_model
        draft = await asyncio.to_thread(load_draft, draft_path)
    if vocab_size is None:
        vocab_size = draft.vocab_size if draft is not None else len(tokenizer)
    if draft is not None:
        draft = DraftView(draft, vocab_size)
    mode = await detect_scoring_mode(engine_client, vocab_size, sampling_params_cls=sampling_params_cls, env=env)
    scorer = VLLMScorer(engine_client, vocab_size, sampling_params_cls=sampling_params_cls, mode=mode)
    log.info("DSBD scoring through vLLM with %s (vocabulary %d)", scorer.mode, vocab_size)
    target = VLLMTargetModel(scorer, asyncio.get_running_loop(), float(env.get("DSBD_SCORE_TIMEOUT_SECONDS") or 120))
    if generator_factory is None:
        from dsbd.serve import default_generator_factory

        generator_factory = default_generator_factory()
    limits = Limits(max_tokens=int(env.get("DSBD_MAX_TOKENS") or DEFAULT_LIMITS.max_tokens))
    service = DecodeService(
        tokenizer,
        target,
        draft,
        generator_factory,
        model_name,
        limits=limits,
        max_model_len=getattr(model_config, "max_model_len", None),
        share_generator=False,  # stateless target and draft: requests decode concurrently
    )
    return DSBDHandler(
        service,
        api_key=env.get("DSBD_API_KEY") or None,
        allow_unauthenticated=(env.get("DSBD_ALLOW_UNAUTHENTICATED") or "").lower() in {"1", "true", "yes"},
        limits=limits,
        max_concurrency=int(env.get("DSBD_MAX_CONCURRENCY") or 4),
    )


class DSBDEndpointPlugin:
    """The ``vllm.endpoint_plugins`` object (vLLM's ``EndpointPlugin`` protocol, two phases)."""

    name = PLUGIN_NAME
    required_tasks: tuple[str, ...] | None = ("generate",)
    state_attr = "dsbd_handler"

    def attach_router(self, app: Any) -> None:
        """Phase A (``build_app``): register the route; the engine does not exist yet."""
        from fastapi import Request
        from fastapi.responses import JSONResponse

        state_attr = self.state_attr

        async def dsbd_completions(request):
            handler = getattr(request.app.state, state_attr, None)
            if handler is None:
                status, body = 503, error_body(503, "the DSBD route needs a running engine", kind="server_error")
            else:
                authorization = request.headers.get("authorization")
                if not handler.authorized(authorization):  # before the body is read
                    status, body = 401, error_body(401, "a valid bearer token is required (DSBD_API_KEY)")
                else:
                    status, body = await handler.handle(authorization, await request.body())
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse(body, status_code=status, headers=headers)

        # Real classes, not strings: FastAPI resolves annotations against module globals, and
        # these are imported here so that importing the plugin never imports FastAPI.
        dsbd_completions.__annotations__ = {"request": Request, "return": JSONResponse}
        # Straight onto the app: an APIRoute in app.routes is what vLLM's attach step inspects when
        # plugin routes replace earlier ones (newer FastAPI wraps include_router'ed routers instead).
        app.add_api_route(DSBD_ROUTE, dsbd_completions, methods=["POST"], name="dsbd_completions")

    async def init_state(self, engine_client: Any, state: Any, args: Namespace | None) -> None:
        """Phase B (``init_app_state``): tokenizer, draft and scorer for the route's handler."""
        if engine_client is None:  # the CPU-only render server has no engine
            setattr(state, self.state_attr, None)
            return
        names = getattr(args, "served_model_name", None) if args is not None else None
        model = (names[0] if isinstance(names, list | tuple) and names else names) or getattr(args, "model", None)
        handler = await build_handler(
            engine_client, model_name=str(model or "dsbd"), draft_path=os.environ.get("DSBD_DRAFT_MODEL") or None
        )
        setattr(state, self.state_attr, handler)
