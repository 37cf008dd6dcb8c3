#!/usr/bin/env bash
# On a CUDA machine: prunekit (streamed, blocks on the GPU) vs llm-compressor 0.14 oneshot on a 1.1B bf16
# random-weight Llama (benchmarks/cuda_check.py builds it), Wanda and SparseGPT 50%, the same 64 x 512
# calibration windows, each in its own process; whole-process times, the tools' own call times, peak RSS
# and peak device memory. Results: benchmarks/results/cuda_h200.md.
# The lent machine has torch and transformers but no network: llm-compressor 0.14.0.1 and the packages
# it needs beyond those (compressed-tensors 0.19.0, auto-round 0.15.1, datasets 5.2.0, loguru, dill,
# multiprocess, pydantic, pydantic-core, annotated-types, typing-inspection) travel as wheels in .whl/
# (pip download --no-deps --only-binary=:all: --python-version 3.12 ...), SmolLM2's tokenizer files in
# TOKENIZER (default .gpu/tok).
set -u
[ -n "${SKIP_WHL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZER=${TOKENIZER:-.gpu/tok}
OUT=${OUT:-/tmp/peer_out}; mkdir -p $OUT
PK=${PK:-"env PYTHONPATH=src python3"}
LC=${LC:-"env PYTHONPATH=/tmp/site python3"}
$PK benchmarks/cuda_check.py build || exit 1
BIG=${BIG_DIR:-/tmp/gpu_big}
$PK - <<PY
import torch; from safetensors.torch import save_file
g = torch.Generator().manual_seed(0)
vocab = 32000 if not __import__("os").environ.get("BIG_SMALL") else 32000
save_file({"calibration": torch.randint(0, vocab, (64, 512), generator=g), "evaluation": torch.randint(0, vocab, (2, 512), generator=g)}, "$BIG/windows.safetensors")
PY
for m in wanda sparsegpt; do
  t0=$EPOCHREALTIME; echo "== prunekit $m"; $PK benchmarks/cuda_check.py $m 2>&1 | grep -v "Loading weights\|Writing model"; echo "process_s $(python3 -c "print(round($EPOCHREALTIME - $t0, 1))")"
  t0=$EPOCHREALTIME; echo "== llm-compressor $m"; $LC benchmarks/peers/llmcompressor_oneshot.py $BIG/model $BIG/windows.safetensors $m 0.5 16 0 bfloat16 > $OUT/llmc_$m.log 2>&1; echo "process_s $(python3 -c "print(round($EPOCHREALTIME - $t0, 1))")"; tail -1 $OUT/llmc_$m.log; tail -5 $OUT/llmc_$m.log | grep -i error
done
