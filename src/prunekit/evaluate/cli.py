"""``prunekit eval``: perplexity (the default), prunekit's zero-shot tasks, lm-eval-harness tasks;
``prunekit report``: one page with plots (see :mod:`prunekit.evaluate.report`).

Every name and number is checked before the model loads: a task name is a prunekit task
(``prunekit list tasks``), ``perplexity``, or (with the ``lmeval`` extra) an lm-eval task.
"""

from __future__ import annotations

import contextlib
import difflib
import sys

from prunekit.core.errors import PrunekitError, unknown_choice
from prunekit.core.io import scratch_folder
from prunekit.core.jsonout import dumps_json
from prunekit.core.registry import TASKS

PERPLEXITY = "perplexity"


def parse_nwindows(value: str) -> int | None:
    """``--nwindows``: a count >= 1, or ``all`` (None: the whole stream)."""
    if str(value).strip().lower() == "all":
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise PrunekitError(f"--nwindows must be an integer >= 1 or 'all', got {value!r}") from None
    if number < 1:
        raise PrunekitError(f"--nwindows must be an integer >= 1 or 'all', got {number}")
    return number


def split_tasks(spec: str | None, lm_eval_ok: bool = True) -> tuple[bool, list[str], list[str]]:
    """(run perplexity, prunekit task names, lm-eval task names) of ``--tasks``; no ``--tasks``:
    perplexity only. Unknown names are one-line errors, the nearest name suggested; lm-eval names
    need the extra."""
    if spec is None:
        return True, [], []
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise PrunekitError(f"--tasks {spec!r} names no task (choices: {', '.join([PERPLEXITY, *TASKS.names()])})")
    ours, theirs = [], []
    for name in dict.fromkeys(names):
        if name == PERPLEXITY:
            continue
        if name in TASKS:
            ours.append(TASKS.canonical(name))
        elif difflib.get_close_matches(name, [PERPLEXITY, *TASKS.names()], n=1, cutoff=0.8):
            raise unknown_choice("task", name, [PERPLEXITY, *TASKS.names()])
        else:
            theirs.append(name)
    if theirs and not lm_eval_ok:
        raise PrunekitError(f"unknown task {theirs[0]!r}: the report scores prunekit's tasks only "
                            f"({', '.join([PERPLEXITY, *TASKS.names()])}); run lm-eval tasks with prunekit eval --tasks")
    if theirs:
        check_lm_eval_tasks(theirs)
    return PERPLEXITY in names, ours, theirs


def check_lm_eval_tasks(names: list[str]) -> None:
    from prunekit.evaluate.lmeval import EXTRA, known_tasks

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise PrunekitError(f"task {names[0]!r} is not a prunekit task ({', '.join(TASKS.names())}); lm-eval-harness "
                            f"tasks need the extra: {EXTRA}") from None
    known = known_tasks()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, [*TASKS.names(), *known], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PrunekitError(f"unknown task {name!r}{hint} (prunekit tasks: {', '.join(TASKS.names())}; "
                                f"lm-eval knows {len(known)} more: lm-eval ls tasks)")


def check_eval_args(args) -> tuple[bool, list[str], list[str]]:
    """Every flag of ``prunekit eval`` that needs no weights; returns :func:`split_tasks`."""
    from prunekit.core.data_sources import check_count, check_source

    args.nwindows = parse_nwindows(args.nwindows)
    check_count(args.seqlen, "--seqlen", 2)  # a window of one token has nothing to predict
    if args.stride is not None:
        check_count(args.stride, "--stride")
        if args.stride > args.seqlen:
            raise PrunekitError(f"--stride {args.stride} is longer than --seqlen {args.seqlen}; use 1 to {args.seqlen}")
    if args.limit is not None:
        check_count(args.limit, "--limit")
    check_count(args.batch_tokens, "--batch-tokens")
    run_ppl, ours, theirs = split_tasks(args.tasks)
    if args.lmeval and not ours:
        raise PrunekitError("--lmeval runs prunekit's tasks through lm-eval-harness: name some with --tasks "
                            f"({', '.join(TASKS.names())})")
    if args.lmeval:
        from prunekit.evaluate.lmeval import require_lm_eval

        require_lm_eval()
    if run_ppl:
        check_source(args.text)
    return run_ppl, ours, theirs


def per_byte_text(r) -> str:
    """" (bits per byte 0.9876, word perplexity 123.45)" of a :class:`PerplexityResult`; empty where they
    are unknown (token tensors without a tokenizer)."""
    shown = []
    if r.bits_per_byte is not None:
        shown.append(f"bits per byte {r.bits_per_byte:.4f}")
    if r.word_perplexity is not None:
        shown.append(f"word perplexity {r.word_perplexity:.2f}")
    return f" ({', '.join(shown)})" if shown else ""


def run_eval(args) -> int:
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.evaluate.scorer import score_items
    from prunekit.models.loading import (check_dtype, check_seqlen, check_weights, load_config, load_model,
                                         load_tokenizer)

    dtype = check_dtype(args.dtype)
    run_ppl, ours, theirs = check_eval_args(args)
    if run_ppl:
        check_seqlen(load_config(args.model), args.seqlen)
    check_weights(args.model, args.trust_pickle_weights)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=dtype, trust_pickle_weights=args.trust_pickle_weights)
    say = (lambda *a: None) if args.json else print  # --quiet: no progress bars; the result lines stay
    out: dict = {"model": str(args.model)}
    if run_ppl:
        r = perplexity(model, tokenizer, args.text, args.nwindows, args.seqlen, progress=not args.quiet,
                       stride=args.stride)
        out.update({"text": args.text, "seqlen": args.seqlen, "perplexity": r.perplexity, "tokens": r.tokens,
                    "seconds": r.seconds, "windows": r.windows, "scored_tokens": r.scored, "stride": r.stride,
                    "nll": r.nll, "bytes": r.bytes, "words": r.words, "bits_per_byte": r.bits_per_byte,
                    "byte_perplexity": r.byte_perplexity, "word_perplexity": r.word_perplexity})
        overlap = f", stride {r.stride}" if r.stride else ""
        say(f"perplexity {r.perplexity:.2f}{per_byte_text(r)} on {r.windows} windows x {args.seqlen} tokens of "
            f"{args.text}{overlap} ({r.scored:,} tokens scored, {r.seconds:.1f} s)")
    tasks = [TASKS.build(name) for name in ours]
    if tasks:
        out["tasks"] = {}
        for task in tasks:
            result = score_items(model, tokenizer, task, args.limit, args.batch_tokens, progress=not args.quiet)
            out["tasks"][task.name] = result.to_dict()
            say(result.summary())
    lm_tasks = list(theirs)
    with scratch_folder("prunekit-lmeval-") as folder:
        if args.lmeval:
            from prunekit.evaluate.lmeval import export_tasks

            lm_tasks += export_tasks(tasks, folder, args.limit)
        if lm_tasks:
            from prunekit.evaluate.lmeval import run_lmeval

            with contextlib.redirect_stdout(sys.stderr):  # lm-eval's chatter: stdout holds the results only
                out["lmeval"] = run_lmeval(model, tokenizer, lm_tasks, include_path=folder if args.lmeval else None,
                                           limit=args.limit)
            for name, values in out["lmeval"].items():
                shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in values.items()
                                  if isinstance(v, float) and "stderr" not in k)
                say(f"lm-eval {name:<28} {shown}")
    if args.json:
        print(dumps_json(out, default=str))
    return 0
