"""Why SparseGPT 50% in bf16 misses fp32 by more than 2% on SmolLM2-135M: the compute or the storage?

The families protocol (calibration 16 x 256 tokens of Brown b-r, seed 0; perplexity on the first 8 x 256
tokens of Brown press), in-memory ``prunekit.prune``, three modes, each in its own process:

* ``fp32``: load, prune and evaluate in float32;
* ``bf16``: load, prune and evaluate in bfloat16 (statistics and Hessians still accumulate in float32);
* ``fp32-then-bf16``: prune in float32, then cast the pruned model to bfloat16 and evaluate it there.

    for m in fp32 bf16 fp32-then-bf16; do python benchmarks/bf16_sparsegpt.py $m --threads 2; done

Results: the section "Why SparseGPT misses in bf16" of benchmarks/results/families.md.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["fp32", "bf16", "fp32-then-bf16"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import prunekit
    from prunekit.core.recipe import CalibrationConfig, Recipe
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.models import load_model, load_tokenizer
    from prunekit.oneshot.step import PruneStep

    tok = load_tokenizer("smollm2-135m")
    recipe = Recipe([PruneStep(method="sparsegpt", sparsity=0.5)],
                    CalibrationConfig(source="brown", nsamples=16, seqlen=256, seed=0))
    model = load_model("smollm2-135m", dtype=torch.bfloat16 if args.mode == "bf16" else torch.float32)
    t0 = time.perf_counter()
    prunekit.prune(model, recipe, tokenizer=tok, progress=False)
    if args.mode == "fp32-then-bf16":
        model = model.to(torch.bfloat16)
    ppl = perplexity(model, tok, "brown:a", 8, 256).perplexity
    print(f"{args.mode}: perplexity {ppl:.3f}, {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
