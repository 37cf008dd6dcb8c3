"""``prunekit delta``: prune the delta between a fine-tuned model and its base.

    prunekit delta --base smollm2-135m --finetuned out/ft --method dare --sparsity 0.9 --out out/ft-dare90
    prunekit delta --base B --finetuned F --method darex-q --drop 0.99 --option scope=global \\
                   --calibration notes.txt --nsamples 16 --seqlen 256 --out O
    prunekit delta --base B --finetuned F --recipe O/prunekit.json --out O2

    prunekit delta --base B --finetuned F --method dare --drop 0.9 --format sparse --out ft-dare90.safetensors
    prunekit delta apply B ft-dare90.safetensors --out out/ft-dare90

    prunekit delta --base B --lora ADAPTER --method dare --drop 0.9 --out out/lora-dare90           # merged
    prunekit delta --base B --lora ADAPTER --method dare --drop 0.9 --lora-prune factors --out out/lora-f90

With ``--lora`` (instead of ``--finetuned``) the fine-tuned model is the base plus a PEFT LoRA adapter
(:mod:`prunekit.delta.lora`): ``--lora-prune merged`` prunes the delta s*B@A of every adapted layer
like any fine-tuned model's (same outputs); ``--lora-prune factors`` prunes the entries of A and B
themselves and writes an adapter folder of the same format (``--format adapter``, its default) or
the merged model.

The output is the merged model (base + pruned delta), a standard folder whose ``prunekit.json`` is the
recipe that ran (calibration + one delta step) with the base model and the result (per-layer kept
delta entries, the rescaling factors); or, with ``--format sparse``, one safetensors file of indices
and values tied to the base by its sha256 (:mod:`prunekit.delta.sparse`), which ``prunekit delta
apply`` adds to that base. Every check that needs no weights (flags, recipe, text source, both
models' configs, --out) runs before the models load.
"""

from __future__ import annotations

import argparse

from prunekit.core.errors import PrunekitError
from prunekit.core.jsonout import dumps_json
from prunekit.core.inputs import add_trust_pickle_arg

FORMATS = ("merged", "sparse", "adapter")
CALIBRATION_READ = ("source", "nsamples", "seqlen")  # what wanda and darex-q read; the seed is the step's


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``delta`` sub-command to a parent CLI's sub-parsers."""
    from prunekit.core.cli_args import add_output_flags, add_step_flags
    from prunekit.delta.step import DeltaStep

    p = subparsers.add_parser("delta", help="delta pruning: DARE, DAREx-q, magnitude or Wanda-style pruning of the "
                              "difference between a fine-tuned model (or a LoRA adapter) and its base",
                              description="Prune the delta between a fine-tuned model and its base: each target "
                              "layer becomes W_base + pruned(W_ft - W_base). With --lora ADAPTER (a PEFT LoRA folder: "
                              "adapter_config.json + adapter_model.safetensors) instead of --finetuned, the delta of "
                              "each adapted layer is s*B@A (s = lora_alpha/r, or /sqrt(r) with rslora); "
                              "--lora-prune merged prunes that product like any delta, --lora-prune factors prunes "
                              "the entries of A and B (dare, magnitude) and writes a PEFT adapter folder.")
    p.add_argument("--base", help="the base model: an embedded name, a local folder or a hub id (required)")
    p.add_argument("--finetuned", help="the fine-tuned model, same architecture and shapes (this or --lora)")
    p.add_argument("--lora", help="a PEFT LoRA adapter folder of the base (adapter_config.json + "
                   "adapter_model.safetensors) as the fine-tuned model: base + s*B@A per adapted layer")
    add_output_flags(p, out="output folder, or a .safetensors file with --format sparse (required; must not "
                     "exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--format", default=None, choices=FORMATS, help="merged: the merged model (a standard "
                   "folder; the default); sparse: one file of the kept delta entries (indices + values) and the "
                   "base's sha256; adapter: a PEFT LoRA adapter folder (--lora-prune factors, its default)")
    add_step_flags(p, [DeltaStep], calibration=CALIBRATION_READ)
    p.add_argument("--recipe", default=None, help="YAML/JSON recipe with one delta step (an output's prunekit.json "
                   "repeats its run); flags given too apply to it")
    add_trust_pickle_arg(p)
    sub = p.add_subparsers(dest="delta_command", metavar="{apply}")
    a = sub.add_parser("apply", help="add a sparse delta (--format sparse) to the base it was made from")
    a.add_argument("base", help="the base model the delta was made from")
    a.add_argument("delta", help="the sparse delta file (.safetensors)")
    add_output_flags(a, out="output folder of the merged model", required=True)
    a.add_argument("--overwrite", action="store_true")
    add_trust_pickle_arg(a)
    return p


def recipe_from_args(args):
    """The delta recipe: ``--recipe`` (if given; one delta step) with the flags given applied to it
    (:func:`prunekit.core.cli_args.recipe_from_flags`)."""
    from prunekit.core.cli_args import recipe_from_flags
    from prunekit.core.recipe import load_recipe
    from prunekit.delta.step import DeltaStep

    recipe = load_recipe(args.recipe) if args.recipe else None
    if recipe is not None and recipe.kinds() != ["delta"]:
        raise PrunekitError(f"recipe {args.recipe!r} holds {', '.join(recipe.kinds())} steps; `prunekit delta` runs "
                            "one delta step")
    return recipe_from_flags(args, DeltaStep, recipe, calibration=CALIBRATION_READ)


SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "n_embd", "n_layer", "n_head", "n_inner", "ffn_dim")


def check_configs(base_config, ft_config) -> None:
    """Same architecture and the same sizes (read from the configs, before any weight loads)."""
    if base_config.model_type != ft_config.model_type:
        raise PrunekitError(f"the base is a {base_config.model_type} model but the fine-tuned model a "
                            f"{ft_config.model_type} model; a delta needs two models of the same architecture")
    a, b = (c.get_text_config() if hasattr(c, "get_text_config") else c for c in (base_config, ft_config))
    for key in SHAPE_KEYS:
        if getattr(a, key, None) != getattr(b, key, None):
            raise PrunekitError(f"the base has {key} {getattr(a, key, None)} but the fine-tuned model "
                                f"{getattr(b, key, None)}; a delta needs two models of the same shapes")


def output_format(args, step) -> str:
    """``--format``, checked against the input: ``adapter`` only for pruned LoRA factors (the default there)."""
    if args.lora and args.finetuned:
        raise PrunekitError("give --finetuned (a fine-tuned model) or --lora (a LoRA adapter of the base), not both")
    if not args.lora and step.lora_prune == "factors":
        raise PrunekitError("lora_prune factors prunes the factors of a LoRA adapter: give --lora ADAPTER instead of "
                            "--finetuned (or --lora-prune merged)")
    fmt = args.format or ("adapter" if args.lora and step.lora_prune == "factors" else "merged")
    if fmt == "adapter" and not (args.lora and step.lora_prune == "factors"):
        raise PrunekitError("--format adapter writes a LoRA adapter whose factors were pruned: it needs --lora ADAPTER "
                            "and --lora-prune factors (a pruned merged delta is no longer low-rank)")
    return fmt


def run(args) -> int:
    if getattr(args, "delta_command", None) == "apply":
        return run_apply(args)
    from prunekit.core.budget import check_calibration
    from prunekit.core.data_sources import check_source
    from prunekit.core.io import check_output
    from prunekit.delta.prune import prune_delta
    from prunekit.delta.sparse import check_delta_file_out
    from prunekit.models.loading import check_seqlen, check_weights, load_config, load_model, load_tokenizer

    missing = [flag for flag in ("base", "finetuned", "out") if not getattr(args, flag)
               and not (flag == "finetuned" and args.lora)]
    if missing:
        raise PrunekitError(f"--{missing[0]} is required (prunekit delta --base B --finetuned F --out O, or --lora "
                            "ADAPTER instead of --finetuned)")
    recipe = recipe_from_args(args)  # every check that needs no weights comes before the models load
    step = recipe.steps[0]
    fmt = output_format(args, step)
    if args.lora:
        return run_lora(args, recipe, fmt)
    base_config, ft_config = load_config(args.base), load_config(args.finetuned)
    check_configs(base_config, ft_config)
    if step.build().needs_calibration:
        check_source(recipe.calibration.source)
        check_seqlen(ft_config, recipe.calibration.seqlen, "calibration seqlen")
        check_calibration(ft_config, recipe.calibration)
    trust = args.trust_pickle_weights
    base_path, ft_path = check_weights(args.base, trust), check_weights(args.finetuned, trust)
    inputs = (args.base, base_path, args.finetuned, ft_path)
    if fmt == "sparse":
        check_delta_file_out(args.out, args.overwrite, inputs)
    else:
        check_output(args.out, args.overwrite, inputs=inputs)
    tokenizer = load_tokenizer(args.finetuned)
    base = load_model(args.base, trust_pickle_weights=trust)
    finetuned = load_model(args.finetuned, trust_pickle_weights=trust)
    result = prune_delta(base, finetuned, step, recipe.calibration, tokenizer, progress=not args.quiet)
    manifest = {**recipe.to_dict(), "result": {"base_model": str(base_path), "delta": result.to_dict()}}
    out = save_merged(args, fmt, base, finetuned, tokenizer, manifest, inputs, ft_path)
    report(args, result, out)
    return 0


def run_lora(args, recipe, fmt: str) -> int:
    """``prunekit delta --base B --lora ADAPTER``: the fine-tuned model is the base plus the adapter."""
    from prunekit.core.budget import check_calibration
    from prunekit.core.data_sources import check_source
    from prunekit.core.io import check_output
    from prunekit.delta.lora import check_adapter, merged_model, prune_factors, read_adapter, save_adapter
    from prunekit.delta.prune import prune_delta
    from prunekit.delta.sparse import check_delta_file_out
    from prunekit.models.loading import check_seqlen, check_weights, load_config, load_model, load_tokenizer

    step = recipe.steps[0]
    adapter = read_adapter(args.lora)  # small: read and checked before the base loads
    base_config = load_config(args.base)
    if step.build().needs_calibration:
        check_source(recipe.calibration.source)
        check_seqlen(base_config, recipe.calibration.seqlen, "calibration seqlen")
        check_calibration(base_config, recipe.calibration)
    base_path = check_weights(args.base, args.trust_pickle_weights)
    inputs = (args.base, base_path, args.lora)
    if fmt == "sparse":
        check_delta_file_out(args.out, args.overwrite, inputs)
    else:
        check_output(args.out, args.overwrite, inputs=inputs)
    tokenizer, base = load_tokenizer(args.base), load_model(args.base, trust_pickle_weights=args.trust_pickle_weights)
    check_adapter(adapter, base)
    manifest = {**recipe.to_dict(), "result": {"base_model": str(base_path), "lora": adapter.describe()}}
    if step.lora_prune == "factors":
        pruned, result = prune_factors(adapter, step, base)
        manifest["result"].update(lora_pruned=pruned.describe(), delta=result.to_dict())
        if fmt == "adapter":
            out = save_adapter(pruned, args.out, args.overwrite, manifest, inputs, source=str(base_path))
            report(args, result, out, pruned)
            return 0
        finetuned = merged_model(base, pruned)
    else:
        pruned, finetuned = None, merged_model(base, adapter)
        result = prune_delta(base, finetuned, step, recipe.calibration, tokenizer, progress=not args.quiet)
        manifest["result"]["delta"] = result.to_dict()
    out = save_merged(args, fmt, base, finetuned, tokenizer, manifest, inputs, base_path)
    report(args, result, out, pruned or adapter)
    return 0


def save_merged(args, fmt, base, finetuned, tokenizer, manifest, inputs, source) -> object:
    """The merged model (a standard folder) or, with ``--format sparse``, its sparse delta file."""
    from prunekit.core.io import save_pretrained
    from prunekit.delta.sparse import save_sparse_delta

    if fmt == "sparse":
        return save_sparse_delta(args.out, base, finetuned, {"source_model": source, **manifest}, args.overwrite,
                                 inputs)
    return save_pretrained(finetuned, args.out, tokenizer, manifest=manifest, overwrite=args.overwrite, source=source)


def report(args, result, out, adapter=None) -> None:
    if args.json:
        data = result.to_dict()
        data.pop("layers")
        if adapter is not None:
            data["lora"] = adapter.describe()
        print(dumps_json({**data, "base": str(args.base), "finetuned": str(args.finetuned or args.lora),
                          "out": str(out)}))
        return
    if not args.quiet:
        if adapter is not None:
            print(f"LoRA adapter r={adapter.rank}, {len(adapter.factors)} modules: {adapter.nonzero():,} of "
                  f"{adapter.parameters():,} factor entries nonzero")
        print(result.summary())
    print(f"saved to {out}")


def run_apply(args) -> int:
    """``prunekit delta apply BASE DELTA --out O``: the merged model of a sparse delta and its base."""
    from prunekit.core.io import check_output, save_pretrained
    from prunekit.delta.sparse import apply_sparse_delta, read_header
    from prunekit.models.loading import check_weights, load_config, load_model, load_tokenizer

    header = read_header(args.delta)  # checks that need no weights first
    load_config(args.base)
    base_path = check_weights(args.base, args.trust_pickle_weights)
    check_output(args.out, args.overwrite, inputs=(args.base, base_path))
    tokenizer = load_tokenizer(args.base)
    model = load_model(args.base, trust_pickle_weights=args.trust_pickle_weights)
    apply_sparse_delta(model, args.delta)
    manifest = {k: header[k] for k in ("steps", "calibration") if k in header}
    manifest["result"] = {**(header.get("result") or {}), "sparse_delta": str(args.delta)}
    out = save_pretrained(model, args.out, tokenizer, manifest=manifest, overwrite=args.overwrite, source=base_path)
    if args.json:
        print(dumps_json({"base": str(args.base), "out": str(out), "tensors": len(header["shapes"])}))
    else:
        print(f"applied {len(header['shapes'])} tensor deltas to {args.base}; saved to {out}")
    return 0
