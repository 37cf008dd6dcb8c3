"""``prunekit vocab``: keep the vocabulary a corpus needs.

    prunekit vocab --model smollm2-135m --text brown:b-r --out out/smollm2-brown
    prunekit vocab --model smollm2-135m --text notes.txt --top 8000 --keep-file ids.txt --out out/x
    prunekit vocab --model smollm2-135m --recipe out/smollm2-brown/prunekit.json --out out/y
    prunekit vocab --model smollm2-135m --no-text --keep-file ids.txt --out out/z   # exactly these ids (+ base)

The output is a standard folder (smaller ``vocab_size``, remapped special-token ids, rewritten
``tokenizer.json``) that loads with ``AutoModelForCausalLM``/``AutoTokenizer``; its
``prunekit.json`` holds the step that ran and the id map (``result.vocab.kept_ids``, ranges such as
``"0-16,18,20-31"``: new id j is the j-th id listed, an id of the original model also when the input
was itself vocabulary-pruned; :func:`prunekit.vocab.prune.read_id_map` reads it).
Every check that needs no weights (flags, text source, keep file, --out, the keep set itself: it needs
only the tokenizer) runs before the model loads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.core.jsonout import dumps_json
from prunekit.core.inputs import add_trust_pickle_arg

MANIFEST_KEY = "vocab"  # result.vocab of prunekit.json


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``vocab`` sub-command to a parent CLI's sub-parsers."""
    from prunekit.core.cli_args import add_output_flags, add_step_flags
    from prunekit.vocab.step import VocabStep

    p = subparsers.add_parser("vocab", help="vocabulary pruning: keep the token ids a corpus needs, drop the other "
                              "embedding and output-head rows, rewrite the tokenizer")
    p.add_argument("--model", required=True, help="smollm2-135m, a local folder, or a Hugging Face hub id")
    add_output_flags(p, out="output folder (must not exist unless --overwrite)", required=True)
    p.add_argument("--overwrite", action="store_true")
    add_step_flags(p, [VocabStep])
    p.add_argument("--no-text", action="store_true", help="keep no corpus's tokens: only --top, --keep-file (and "
                   "the special and alphabet tokens)")
    p.add_argument("--recipe", default=None, help="YAML/JSON recipe with one vocab step (an output's prunekit.json "
                   "repeats its run); flags given too apply to it")
    add_trust_pickle_arg(p)
    return p


def step_from_args(args):
    """The vocab step: ``--recipe``'s (if given) with the flags given applied to it
    (:func:`prunekit.core.cli_args.recipe_from_flags`)."""
    from prunekit.core.cli_args import recipe_from_flags
    from prunekit.core.recipe import load_recipe
    from prunekit.vocab.step import VocabStep

    recipe = None
    if args.recipe:
        recipe = load_recipe(args.recipe)
        if recipe.kinds() != ["vocab"]:
            raise PrunekitError(f"recipe {args.recipe!r} holds {', '.join(recipe.kinds())} steps; `prunekit vocab` "
                                "runs one vocab step")
    if args.no_text and args.text is not None:
        raise PrunekitError("--text and --no-text contradict each other; give one")
    return recipe_from_flags(args, VocabStep, recipe, given={"text": None} if args.no_text else None).steps[0]


def compose_ids(folder, kept_ids: list[int]) -> list[int]:
    """Kept ids relative to the original model when the input model was already vocabulary-pruned."""
    from prunekit.vocab.prune import read_id_map

    previous = read_id_map(folder) if Path(folder).is_dir() else None
    if not previous:
        return kept_ids
    if max(kept_ids) >= len(previous):
        raise PrunekitError(f"the id map in {str(folder)!r} has {len(previous)} ids but the model has more tokens; "
                            "the prunekit.json does not belong to this model")
    return [previous[i] for i in kept_ids]


def run(args) -> int:
    from prunekit.core.io import check_output, save_pretrained
    from prunekit.models.loading import check_weights, load_config, load_model, load_tokenizer
    from prunekit.vocab.prune import encode_ids, prune_vocab
    from prunekit.vocab.step import step_keep_set

    step = step_from_args(args)  # every check that needs no weights comes before the model loads
    config = load_config(args.model)
    path = check_weights(args.model, args.trust_pickle_weights)
    check_output(args.out, args.overwrite, inputs=(args.model, path))
    tokenizer = load_tokenizer(args.model)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    say = (lambda m: None) if args.quiet or args.json else (
        lambda m: print(f"prunekit vocab: {m}", file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    say(f"keep set: tokenizing {step.text}" if step.text is not None else "keep set")
    keep = step_keep_set(tokenizer, step, getattr(text_config, "vocab_size", None))  # tokenizer only, no weights
    say(f"keep set: {len(keep.ids):,} of {keep.vocab_size:,} token ids ({time.perf_counter() - t0:.0f} s); "
        "loading the model")
    model = load_model(args.model, trust_pickle_weights=args.trust_pickle_weights)
    new_tokenizer, result = prune_vocab(model, tokenizer, keep)
    say(f"pruned the embedding and rewrote the tokenizer; saving to {args.out}")
    data = result.to_dict()
    data["kept_ids"] = encode_ids(compose_ids(path, result.kept_ids))
    manifest = {"steps": [step.to_dict()], "result": {MANIFEST_KEY: data}}
    out = save_pretrained(model, args.out, new_tokenizer, manifest=manifest, overwrite=args.overwrite, source=path)
    if args.json:
        shown = {k: v for k, v in data.items() if k != "kept_ids"}
        print(dumps_json({**shown, "model": str(args.model), "text": step.text, "out": str(out)}))
        return 0
    if not args.quiet:
        print(result.summary())
        print(f"kept: {', '.join(f'{k} {v:,}' for k, v in result.counts.items())}")
    print(f"saved to {out}")
    return 0
