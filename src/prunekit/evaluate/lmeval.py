"""lm-eval-harness on a prunekit-loaded model (the optional extra ``prunekit[lmeval]``).

:func:`run_lmeval` wraps the model already in memory (any prunekit output, structured folders
with per-layer widths included, loaded by :func:`prunekit.models.load_model`) in lm-eval's
``HFLM`` and runs lm-eval's tasks on it, zero-shot. Its own tasks (hellaswag, arc_easy, ...) need
their datasets from the Hugging Face hub; prunekit's offline tasks are exported as lm-eval task
YAMLs over local JSONL (:func:`export_tasks`), so the integration runs here, offline, end to end,
and gives the accuracy of prunekit's own scorer on the same items.
"""

from __future__ import annotations

import json
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.evaluate.tasks.base import DELIMITER, LAST_WORD, Task

EXTRA = "pip install 'prunekit[lmeval]'"
PREFIX = "prunekit_"  # lm-eval names of the exported tasks: prunekit_wordnet_gloss, ...


def require_lm_eval() -> None:
    """A one-line error naming the extra when lm-eval-harness is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise PrunekitError(f"lm-eval-harness is not installed; install the extra: {EXTRA}") from None


def lm_eval_name(task: Task) -> str:
    return PREFIX + task.name.replace("-", "_")


def _yaml(task: Task, data: Path) -> str:
    """The lm-eval task config of an exported task (JSON is valid YAML)."""
    config = {
        "task": lm_eval_name(task),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "doc_to_text": "context",
        "metadata": {"version": float(task.version), "prunekit_task": task.name, "seed": task.seed},
    }
    if task.kind == LAST_WORD:  # as lm-eval's lambada: greedy exact match of " word"
        config |= {"output_type": "loglikelihood", "doc_to_target": "continuation",
                   "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                   {"metric": "perplexity", "aggregation": "perplexity",
                                    "higher_is_better": False}]}
    else:
        config |= {"output_type": "multiple_choice", "doc_to_choice": "choices", "doc_to_target": "label",
                   "target_delimiter": DELIMITER,
                   "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                   {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
    return json.dumps(config, indent=2) + "\n"


def export_tasks(tasks: list[Task], folder: str | Path, limit: int | None = None) -> list[str]:
    """Write ``<name>.jsonl`` (the first ``limit`` items) and ``<name>.yaml`` for each task into
    ``folder``; returns the lm-eval task names (``--include_path folder`` makes lm-eval find them)."""
    from prunekit.core.io import write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for task in tasks:
        name = lm_eval_name(task)
        data = (folder / f"{name}.jsonl").resolve()
        rows = []
        for item in task.items(limit):
            row = item.to_dict()
            if task.kind == LAST_WORD:
                row["continuation"] = DELIMITER + item.target
            rows.append(json.dumps(row, ensure_ascii=False) + "\n")
        write_text(data, "".join(rows))
        write_text(folder / f"{name}.yaml", _yaml(task, data))
        names.append(name)
    return names


def known_tasks() -> set[str]:
    """Every task and group name lm-eval knows (its own; the datasets may still be unreachable)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    return set(TaskManager().all_tasks)


def run_lmeval(model, tokenizer, tasks: list[str], include_path: str | Path | None = None,
               limit: int | None = None, batch_size: int = 8, include_defaults: bool = True,
               bootstrap_iters: int = 1000) -> dict[str, dict]:
    """lm-eval's results per task (``{"acc,none": ..., "acc_stderr,none": ...}``), zero-shot, on the
    model in memory. ``include_path`` adds a folder of task YAMLs (see :func:`export_tasks`)."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                  max_length=_max_length(model))
        manager = TaskManager(include_path=str(include_path) if include_path else None,
                              include_defaults=include_defaults)
        try:
            out = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=0, limit=limit, task_manager=manager,
                                  log_samples=False, bootstrap_iters=bootstrap_iters, verbosity="ERROR")
        except (OSError, ConnectionError, RuntimeError, ValueError) as err:  # mostly: a dataset out of reach
            from prunekit.core.io import describe_error

            raise PrunekitError(f"lm-eval could not run {', '.join(tasks)} ({describe_error(err, 160)}); its own "
                                "tasks load their datasets from the Hugging Face hub, which must be reachable or "
                                "cached") from None
    finally:
        model.train(was_training)
    return {name: dict(values) for name, values in (out or {}).get("results", {}).items()}


def _max_length(model) -> int:
    from prunekit.evaluate.scorer import max_positions

    return max_positions(model) or 2048
