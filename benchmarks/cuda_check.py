"""Device check of prunekit's one-shot paths on CUDA (random-weight Llamas; no real weights travel).

1. Tiny Llama (SmolLM2's tokenizer): magnitude / Wanda / SparseGPT 50% and Wanda 2:4, masks from
   (a) CPU in memory, (b) in memory with device=cuda (model on CPU, blocks on the GPU),
   (c) the whole model on the GPU, (d) streamed from a folder with device=cuda (fp32 and bf16).
   Mask agreement with (a) and the reported peak device memory.
2. Scale: a ~1.2B-parameter random Llama (TinyLlama shape: 22 blocks, hidden 2048, MLP 5632, GQA 32/4)
   saved in bf16, streamed Wanda and SparseGPT 50% with device=cuda, 64 x 512 random-token windows:
   wall time, peak RSS, peak device memory; and the same prunes with the whole model on the device.

Each mode in its own process (peak memory per process), results as JSON under $OUT:

    for m in tiny build wanda sparsegpt mem-wanda mem-sparsegpt; do python benchmarks/cuda_check.py $m; done

Results: benchmarks/results/cuda_h200.md.
"""
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import prunekit
from prunekit import prune, prune_pretrained

OUT = Path(os.environ.get("OUT", "/tmp/gpu_out"))
OUT.mkdir(parents=True, exist_ok=True)
DEV = "cuda" if torch.cuda.is_available() else "cpu"

report = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)",
          "torch": torch.__version__, "prunekit": prunekit.__version__}
print(report, flush=True)
# SmolLM2's tokenizer (for the device run: its tokenizer files copied next to the script, TOKENIZER=that folder)
tok = PreTrainedTokenizerFast.from_pretrained(os.environ.get("TOKENIZER", Path.home() / ".cache/prunekit/models/smollm2-135m"))


def save(cfg, folder, dtype):
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return model


def masks(model):
    return {n: (m.weight == 0).cpu() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "lm_head"}


def agree(a, b):
    same = sum(int((a[n] == b[n]).sum()) for n in a)
    return same / sum(a[n].numel() for n in a)


def load(folder, dtype=torch.float32):
    return LlamaForCausalLM.from_pretrained(folder, dtype=dtype)


MODE = sys.argv[1] if len(sys.argv) > 1 else "tiny"
BIG = Path(os.environ.get("BIG_DIR", "/tmp/gpu_big"))
BIG_CFG = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
if os.environ.get("BIG_SMALL"):  # a dry run of the scale modes on a CPU
    BIG_CFG = LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


def tiny_check():
    tmp = Path(tempfile.mkdtemp())
    tiny = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    save(tiny, tmp / "tiny", torch.float32)
    windows = torch.randint(0, len(tok), (16, 64), generator=torch.Generator().manual_seed(0))
    calib = dict(calibration=windows, progress=False)
    rows = []
    for method, pattern in (("magnitude", None), ("wanda", None), ("sparsegpt", None), ("wanda", "2:4")):
        kw = dict(method=method, sparsity=0.5 if pattern is None else None, pattern=pattern)
        ref = load(tmp / "tiny")
        prune(ref, **kw, **calib)
        a = masks(ref)
        row = {"method": method, "pattern": pattern or "unstructured"}
        m = load(tmp / "tiny")
        r = prune(m, **kw, **calib, device=DEV)
        row["blocks_on_gpu_agree"] = agree(a, masks(m))
        m = load(tmp / "tiny").to(DEV)
        if DEV == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = prune(m, **kw, **calib)
        row["model_on_gpu_agree"] = agree(a, masks(m))
        row["model_on_gpu_device"] = r.device
        for dt in ("float32", "bfloat16"):
            out = tmp / f"out-{method}-{pattern}-{dt}".replace(":", "_")
            r = prune_pretrained(tmp / "tiny", out, **kw, **calib, device=DEV, dtype=dt)
            row[f"streamed_{dt}_agree"] = agree(a, masks(load(out)))
            row[f"streamed_{dt}_peak_device_mb"] = r.peak_device_mb
            row[f"streamed_{dt}_saved_dtype"] = json.loads((out / "config.json").read_text()).get("dtype") or \
                json.loads((out / "config.json").read_text()).get("torch_dtype")
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["tiny"] = rows

    (OUT / "gpu_tiny.json").write_text(json.dumps(report, indent=2))


def build_big():
    t0 = time.perf_counter()
    with torch.device(DEV):
        model = save(BIG_CFG, BIG / "model", torch.bfloat16)
    info = {"parameters": sum(p.numel() for p in model.parameters()), "build_s": time.perf_counter() - t0,
            "bf16_bytes": sum(f.stat().st_size for f in (BIG / "model").glob("*.safetensors"))}
    print(json.dumps(info), flush=True)
    (OUT / "gpu_big_model.json").write_text(json.dumps(info, indent=2))


def prune_big(method):
    windows = torch.randint(0, 32000, (64, 512), generator=torch.Generator().manual_seed(0))
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    r = prune_pretrained(BIG / "model", BIG / f"out-{method}", method=method, sparsity=0.5, calibration=windows,
                         progress=False, device=DEV, dtype="bfloat16")
    row = {"method": method, "wall_s": time.perf_counter() - t0, "sparsity": r.sparsity,
           "peak_device_mb": r.peak_device_mb, "peak_rss_mb": r.peak_rss_mb if hasattr(r, "peak_rss_mb") else None,
           "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "timings": r.timings,
           "saved_bytes": sum(f.stat().st_size for f in (BIG / f"out-{method}").glob("*.safetensors"))}
    print(json.dumps(row), flush=True)
    (OUT / f"gpu_big_{method}.json").write_text(json.dumps(row, indent=2))


def prune_big_in_memory(method):
    """The same prune with the whole model on the device (in memory), for the peak device memory."""
    model = LlamaForCausalLM.from_pretrained(BIG / "model", dtype=torch.bfloat16).to(DEV)
    windows = torch.randint(0, 32000, (64, 512), generator=torch.Generator().manual_seed(0))
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    r = prune(model, method=method, sparsity=0.5, calibration=windows, progress=False)
    row = {"method": method, "in_memory_on_device": True, "wall_s": time.perf_counter() - t0,
           "sparsity": r.sparsity, "peak_device_mb": r.peak_device_mb, "timings": r.timings}
    print(json.dumps(row), flush=True)
    (OUT / f"gpu_big_mem_{method}.json").write_text(json.dumps(row, indent=2))


if MODE == "tiny":
    tiny_check()
elif MODE == "build":
    build_big()
elif MODE.startswith("mem-"):
    prune_big_in_memory(MODE[4:])
else:
    prune_big(MODE)
print("DONE", MODE, flush=True)
