"""llm-compressor's oneshot on given calibration windows: run by benchmarks/streaming.py in llm-compressor's
own virtual environment (no prunekit there). Prints one JSON line: the time of the oneshot call, the peak
RSS of this whole process, the sparsity of the pruned linears and the perplexity on the given windows
(exp of the mean per-window next-token NLL, as prunekit's perplexity).

    python llmcompressor_oneshot.py MODEL_DIR WINDOWS.safetensors {wanda|sparsegpt} SPARSITY THREADS [PPL 1|0] [DTYPE]

DTYPE (default float32) is the dtype the model is loaded in. On a machine with a CUDA device the JSON
also gives the peak device memory (torch.cuda.max_memory_allocated) and where the model's weights were.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time


def main() -> None:
    model_dir, windows_file, method, sparsity, threads = sys.argv[1:6]
    with_ppl = sys.argv[6:7] != ["0"]
    dtype = sys.argv[7] if len(sys.argv) > 7 else "float32"
    import torch

    torch.set_num_threads(int(threads))
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    windows = load_file(windows_file)
    calib, evaluation = windows["calibration"], windows["evaluation"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    data = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    kind = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[method]
    recipe = kind(sparsity=float(sparsity), targets=["Linear"], ignore=["re:.*lm_head"])
    t0 = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(calib),
            max_seq_length=calib.shape[1], shuffle_calibration_samples=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    out = {"oneshot_s": seconds, "peak_rss_mb": peak, "sparsity": zeros / max(total, 1), "dtype": dtype}
    if torch.cuda.is_available():
        out["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["weights_on"] = str(next(model.parameters()).device)
    if with_ppl:
        nlls = []
        model.eval()
        with torch.no_grad():
            for ids in evaluation:
                logits = model(input_ids=ids[None]).logits[0, :-1].float()
                nlls.append(torch.nn.functional.cross_entropy(logits, ids[1:]).item())
        out["perplexity"] = math.exp(sum(nlls) / len(nlls))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
