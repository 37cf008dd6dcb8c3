"""Run every ``prunekit`` command of the README in the current environment (a plain install, see
``.ci/fresh_install``), in the README's order so that the outputs of one command feed the next.

An embedded model is replaced by a tiny random Llama with SmolLM2's tokenizer and the settings are
small (a few calibration windows, one epoch on a few hundred images). The README's placeholders get
stand-ins (:func:`stand_ins`: ``M`` is the tiny model, ``out/ft`` a perturbed copy of it, ``notes.txt``
the README's own text, ``out/adapter`` a rank-4 LoRA adapter of the tiny model). A command that names
an input nothing here stands for (``./my-phi3``) or a GPU this machine lacks runs with ``--help`` instead, and so do the sub-commands in :data:`HELP_ONLY`. A
command that needs an optional extra passes when it says so in one line (exit 2, naming
``prunekit[...]``). Anything else that fails, fails the run."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# sub-commands run with --help only, and why (their code paths run for real through the other commands)
HELP_ONLY = {
    "demo": "always the full SmolLM2 (minutes); prune, eval and inspect run the same code for real",
    "data train": "trains a teacher on all 60,000 images (minutes); data score, report and select run for real",
}
# per sub-command: flags replaced or added
SMALL = {
    "prune": {"--nsamples": "2", "--seqlen": "32"},
    "eval": {"--nwindows": "2", "--seqlen": "32"},
    "train": {"--limit": "512", "--epochs": "1"},
    "data score": {"--limit": "512", "--epochs": "1", "--seeds": "0,1", "--score-epochs": "1"},
    "delta": {"--nsamples": "2", "--seqlen": "32"},
}
REPLACED = {"--stride": "16", "--limit": "20"}  # any sub-command: replaced where given, not added
STRUCTURED_RECEIPT = ["--option", "speed_runs=1", "--option", "speed_seqlen=32", "--option", "speed_decode=2"]
INPUT_FLAGS = {"--model", "--base", "--finetuned", "--lora", "--scores", "--selection", "--keep-file", "--text", "--calibration",
               "--recipe"}
NOT_INPUTS = {"data score": {"--scores"}}  # there a list of score names, elsewhere a score folder
NOT_FILES = re.compile(r"brown(:[a-r-]+)?|fashion-mnist|mnist")  # sources that are names, not paths
SUBCOMMANDS = {"data": 2, "delta": 1}  # words naming the sub-command (delta apply: 2)


def readme_commands() -> list[list[str]]:
    """Every line of a ```bash block of the README that runs prunekit (continuations joined), as argv."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            match = re.search(r"(?:^|&& |\.venv/bin/)prunekit (\w.*)$", line)
            if match:
                found.append(shlex.split(match.group(1)))
    return found


def tiny_model(folder: Path) -> Path:
    """A random 8-block Llama (hidden 64) with SmolLM2's tokenizer: every model command runs in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prunekit.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def stand_ins(cwd: Path, tiny: Path) -> dict[str, str]:
    """What the README's placeholders stand for, made in ``cwd``: its commands run for real too."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copy(ROOT / "README.md", cwd / "notes.txt")  # a text of the reader's own
    (cwd / "ids.txt").write_text("# token ids to keep\n0\n1\n2\n")
    model = AutoModelForCausalLM.from_pretrained(tiny)
    torch.manual_seed(1)
    with torch.no_grad():  # a "fine-tuned" model: the tiny one, every weight moved a little
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    model.save_pretrained(cwd / "out" / "ft")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(cwd / "out" / "ft")
    lora_adapter(model, cwd / "out" / "adapter")
    # M: any model; out/smollm2-135m-wanda50: a Wanda 50% output, as out/gemma-wanda50 is by then
    return {"M": str(tiny), "out/smollm2-135m-wanda50": "out/gemma-wanda50"}


def lora_adapter(model, folder: Path) -> None:
    """A rank-4 PEFT LoRA adapter on every attention and MLP projection of ``model``, small random factors."""
    import torch

    from prunekit.delta.lora import LoraAdapter, write_adapter_files

    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
             and name.rsplit(".", 1)[-1].endswith("_proj")]
    gen = torch.Generator().manual_seed(2)
    factors = {}
    for name in names:
        out, inp = model.get_submodule(name).weight.shape
        factors[name] = (0.1 * torch.randn(4, inp, generator=gen), 0.1 * torch.randn(out, 4, generator=gen))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
              "target_modules": sorted({n.rsplit(".", 1)[-1] for n in names}), "lora_dropout": 0.0,
              "bias": "none", "fan_in_fan_out": False, "use_rslora": False}
    folder.mkdir(parents=True)
    write_adapter_files(folder, LoraAdapter(config=config, factors=factors))


def command_of(argv: list[str]) -> str:
    words = 2 if argv[:2] == ["delta", "apply"] else SUBCOMMANDS.get(argv[0], 1)
    return " ".join(argv[:words])


def why_help(argv: list[str], cwd: Path) -> str | None:
    """Why ``argv`` cannot run for real here (an input it only stands for, a missing GPU), or None."""
    import torch

    from prunekit.assets import EMBEDDED_MODELS

    command = command_of(argv)
    words, flags = len(command.split()), INPUT_FLAGS - NOT_INPUTS.get(command, set())
    for i, arg in enumerate(argv[words:], start=words):
        value = argv[i - 1] in flags or (not arg.startswith("-") and not argv[i - 1].startswith("-"))
        if value and arg not in EMBEDDED_MODELS and not NOT_FILES.fullmatch(arg) and not (cwd / arg).exists():
            return f"its input {arg!r} stands for the reader's own"
    if "--device" in argv and argv[argv.index("--device") + 1].startswith("cuda") and not torch.cuda.is_available():
        return "no GPU here"
    return None


def small(argv: list[str], tiny: Path, index: int) -> list[str]:
    """``argv`` with the tiny model for an embedded one, a fresh folder for the placeholder output ``O``,
    and the small settings of its sub-command."""
    from prunekit.assets import EMBEDDED_MODELS

    command = command_of(argv)
    words = len(command.split())
    argv = [str(tiny) if i >= words and a in EMBEDDED_MODELS and (argv[i - 1] in INPUT_FLAGS
                                                                 or not argv[i - 1].startswith("-"))
            else a for i, a in enumerate(argv)]  # a model flag's value or a positional (delta apply BASE)
    argv = [f"out/O-{index}" if i and argv[i - 1] == "--out" and a == "O" else a for i, a in enumerate(argv)]
    for flag, value in REPLACED.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    for flag, value in SMALL.get(command, {}).items():  # after REPLACED: a sub-command's own setting wins
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    if command == "prune" and "--structure" in argv:
        argv += STRUCTURED_RECEIPT
    return argv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="an empty folder to run in (outputs go here)")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the tiny model's save/load bars: noise in a CI log
    work = Path(args.work)
    cwd = work / "cwd"
    cwd.mkdir(parents=True)
    tiny = tiny_model(work / "tiny")
    prunekit = Path(sys.executable).with_name("prunekit")
    stand = stand_ins(cwd, tiny)
    commands = [[stand.get(a, a) for a in argv] for argv in readme_commands()]
    if not commands:
        print("no prunekit command found in README.md", file=sys.stderr)
        return 1
    failed = 0
    for index, argv in enumerate(commands):
        command = command_of(argv)
        reason = HELP_ONLY.get(command) or why_help(argv, cwd)
        run = [*command.split(), "--help"] if reason else small(argv, tiny, index)
        t0 = time.perf_counter()
        proc = subprocess.run([str(prunekit), *run], cwd=cwd, capture_output=True, text=True)
        err = proc.stderr.strip().splitlines()
        if proc.returncode == 0:
            status = "help" if reason else "ok"
        elif proc.returncode == 2 and len(err) == 1 and "prunekit[" in err[0]:
            status = "extra"  # an optional extra, named in one line: what a plain install should say
        else:
            status = f"FAILED ({proc.returncode})"
            failed += 1
        print(f"{status:>11}  {time.perf_counter() - t0:5.1f} s  prunekit {shlex.join(run)}"
              + (f"   [--help: {reason}]" if reason else ""), flush=True)
        if status.startswith("FAILED"):
            print("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:]), file=sys.stderr)
    print(f"{len(commands) - failed} of {len(commands)} README commands passed in a plain install")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
