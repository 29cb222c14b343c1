"""CPU development server for DSBD: the same HTTP surface as the vLLM deployment, on a laptop.

FOR DEVELOPMENT AND TESTS ONLY: one process, Flask/werkzeug, decoding serialised by a lock, CPU
PyTorch. Production traffic goes to vLLM with the ``dsbd`` plugin (``dsbd.vllm_plugin``, see the
README), which serves the same DSBD route.

    python -m dsbd.serve --target models/dsbd/target --draft models/dsbd/draft \\
        [--host 127.0.0.1] [--port 8000] [--api-key-env DSBD_API_KEY]

Endpoints (JSON in, JSON out; see ``dsbd.protocol`` for the fields):

- ``POST /plugins/dsbd/v1/completions``: W beams + decoding statistics (the DSBD route);
- ``POST /v1/completions``, ``POST /v1/chat/completions``: OpenAI-compatible; ``n`` choices are
  the ``n`` best beams; structured outputs via ``response_format`` (json_schema),
  ``structured_outputs`` (``json`` / ``choice``) or ``guided_json`` / ``guided_choice``;
- ``GET /v1/models``; ``GET /health`` (no key needed).

Models load from local paths only (``local_files_only=True``): nothing is downloaded. With the
API key variable set, every route but ``/health`` needs ``Authorization: Bearer <key>``
(compared in constant time); without it the server only binds to a loopback address.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dsbd.api import BeamParams, BeamResult, DSBDParams, Generator, NextTokenModel
from dsbd.protocol import (
    DEFAULT_LIMITS,
    DSBD_ROUTE,
    DecodeRequest,
    Limits,
    RequestError,
    bearer_matches,
    chat_response,
    completion_response,
    dsbd_response,
    error_body,
    models_response,
    parse_chat_request,
    parse_completion_request,
    parse_dsbd_request,
)
from dsbd.service import DecodeService, GeneratorFactory

log = logging.getLogger("dsbd.serve")

BANNER = (
    "dsbd.serve is the CPU DEVELOPMENT server (single process, Flask/werkzeug, one decode at a time): "
    "for development and tests only. Serve production traffic with vLLM and the dsbd plugin."
)
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --------------------------------------------------------------------------------------------
# models


class HFCausalLM:
    """A minimal ``NextTokenModel`` over a Hugging Face causal LM: one batched forward per call.

    Used only when ``dsbd.torch_backend`` (the forest-scoring backend with a KV cache) is not
    installed; it recomputes every prefix, which is slow but exact.
    """

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.vocab_size = int(model.config.vocab_size)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> HFCausalLM:
        import torch
        from transformers import AutoModelForCausalLM

        return cls(AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32))

    def next_logprobs(self, prefixes: list[list[int]]) -> Any:
        import torch

        width = max(len(p) for p in prefixes)
        ids = torch.zeros((len(prefixes), width), dtype=torch.long)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for row, prefix in enumerate(prefixes):  # right padding: real tokens keep positions 0..n-1
            ids[row, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
            mask[row, : len(prefix)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            last = torch.tensor([len(p) - 1 for p in prefixes])
            rows = logits[torch.arange(len(prefixes)), last].double()
            return torch.log_softmax(rows, dim=-1).numpy()


class BeamSamplingGenerator:
    """Plain beam sampling (``dsbd.beam``) when the DSBD generator is not installed: same output
    distribution, no speculation."""

    def __init__(self, target: NextTokenModel, draft: NextTokenModel | None = None) -> None:
        self.target = target

    def generate(
        self, prompt_ids: list[int], params: BeamParams, dsbd: DSBDParams | None, seed: int | None
    ) -> BeamResult:
        from dsbd.beam import beam_sample

        return beam_sample(self.target, prompt_ids, params, seed)


def load_model(path: str | os.PathLike[str]) -> NextTokenModel:
    """A model from a local directory, through ``dsbd.torch_backend`` when it is installed."""
    try:
        from dsbd import torch_backend
    except ImportError:
        return HFCausalLM.from_pretrained(path)
    loader = getattr(torch_backend, "load_model", None) or getattr(
        getattr(torch_backend, "TorchCausalLM", None), "from_pretrained", None
    )
    if loader is None:
        return HFCausalLM.from_pretrained(path)
    model: NextTokenModel = loader(str(path))
    return model


def default_generator_factory() -> GeneratorFactory:
    """``dsbd.generator.DSBDGenerator`` when installed, else plain beam sampling."""
    try:
        from dsbd.generator import DSBDGenerator
    except ImportError:
        log.warning("dsbd.generator is not installed: decoding with plain beam sampling (no speculation)")
        return BeamSamplingGenerator

    def make(target: NextTokenModel, draft: NextTokenModel | None) -> Generator:
        generator: Generator = DSBDGenerator(target, draft)
        return generator

    return make


def load_service(
    target: str | os.PathLike[str],
    draft: str | os.PathLike[str] | None,
    *,
    model_name: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    generator_factory: GeneratorFactory | None = None,
) -> DecodeService:
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    config = AutoConfig.from_pretrained(str(target), local_files_only=True)
    target_model = load_model(target)
    draft_model = load_model(draft) if draft else None
    if draft_model is not None and draft_model.vocab_size != target_model.vocab_size:
        raise SystemExit(
            f"draft vocabulary ({draft_model.vocab_size}) differs from the target's ({target_model.vocab_size}): "
            "DSBD needs a shared tokenizer"
        )
    return DecodeService(
        tokenizer,
        target_model,
        draft_model,
        generator_factory or default_generator_factory(),
        model_name or Path(target).name,
        limits=limits,
        max_model_len=getattr(config, "max_position_embeddings", None),
        lock=threading.Lock(),
    )


# --------------------------------------------------------------------------------------------
# HTTP


def create_app(service: DecodeService, api_key: str | None = None) -> Any:
    """The Flask app. ``api_key`` None: no authentication (only ever bound to loopback by ``main``)."""
    from flask import Flask, Response, jsonify, request
    from werkzeug.exceptions import HTTPException

    app = Flask("dsbd.serve")
    app.config["MAX_CONTENT_LENGTH"] = service.limits.max_body_bytes

    def error(status: int, message: str, param: str | None = None) -> Response:
        response = jsonify(error_body(status, message, param))
        response.status_code = status
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.before_request
    def authenticate() -> Response | None:
        if api_key is None or request.path == "/health":
            return None
        if not bearer_matches(request.headers.get("Authorization"), api_key):
            return error(401, "a valid bearer token is required")
        return None

    @app.errorhandler(RequestError)
    def bad_request(exc: RequestError) -> Response:
        response = jsonify(exc.body())
        response.status_code = exc.status
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = {
            404: "no such route",
            405: "method not allowed",
            413: f"the request body is larger than {service.limits.max_body_bytes} bytes",
        }.get(status, exc.name)
        return error(status, message)

    @app.errorhandler(Exception)
    def server_error(exc: Exception) -> Response:
        log.exception("request failed")
        return error(500, "internal error")

    def body() -> Any:
        limit = service.limits.max_body_bytes
        if (request.content_length or 0) > limit:
            raise RequestError(f"the request body is larger than {limit} bytes", status=413)
        data = request.get_json(silent=True)
        if data is None:
            raise RequestError("the request body must be JSON (Content-Type: application/json)")
        return data

    def run(req: DecodeRequest, render: Callable[..., dict[str, Any]], *args: Any) -> Response:
        try:
            decoded = service.run(req)
        except ValueError as exc:  # the decoding core rejects parameters it cannot honour
            raise RequestError(f"invalid decoding parameters: {exc}") from None
        return jsonify(render(decoded, *args))

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok", "model": service.model_name, "draft": service.draft is not None})

    @app.get("/v1/models")
    def models() -> Response:
        return jsonify(models_response(service.model_name, service.created, service.max_model_len))

    @app.post(DSBD_ROUTE)
    def dsbd_completions() -> Response:
        req = parse_dsbd_request(body(), service.limits)
        return run(req, dsbd_response)

    @app.post("/v1/completions")
    def completions() -> Response:
        req = parse_completion_request(body(), service.limits)
        return run(req, completion_response, req.n)

    @app.post("/v1/chat/completions")
    def chat_completions() -> Response:
        req = parse_chat_request(body(), service.limits)
        return run(req, chat_response, req.n)

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsbd.serve", description=BANNER)
    parser.add_argument("--target", required=True, help="local directory of the target model (and tokenizer)")
    parser.add_argument("--draft", help="local directory of the draft model (omit: plain beam sampling)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key-env", default="DSBD_API_KEY", help="environment variable holding the bearer key")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--max-tokens-limit", type=int, default=DEFAULT_LIMITS.max_tokens)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.warning(BANNER)
    api_key = os.environ.get(args.api_key_env) or None
    if api_key is None:
        if args.host not in _LOOPBACK:
            print(f"{args.api_key_env} is not set: refusing to serve on {args.host} without a key", file=sys.stderr)
            return 2
        log.warning("%s is not set: no authentication (loopback only)", args.api_key_env)
    limits = Limits(max_tokens=args.max_tokens_limit)
    service = load_service(args.target, args.draft, model_name=args.served_model_name, limits=limits)
    from werkzeug.serving import make_server

    server = make_server(args.host, args.port, create_app(service, api_key), threaded=True)
    log.warning("serving %s on http://%s:%d", service.model_name, args.host, server.server_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
