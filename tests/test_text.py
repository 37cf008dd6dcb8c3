import pytest
import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.data_sources import (
    TextTooShortError,
    brown_files,
    brown_text,
    calibration_windows,
    evaluation_windows,
    parse_genres,
)


def test_genre_specs():
    assert parse_genres("a") == "a"
    assert parse_genres("b-h") == "bcdefgh"
    assert parse_genres("jk") == "jk"
    assert parse_genres("") == "bcdefghjklmnpr"  # default calibration: everything but press reportage
    assert parse_genres("h-l") == "hjkl"  # the corpus has no genre i
    for bad in ("z", "h-b", "a-z"):
        with pytest.raises(ValueError, match="Brown genre"):
            parse_genres(bad)


def test_brown_files_and_cleaning():
    press = brown_files("a")
    assert [p.name for p in press[:2]] == ["ca01", "ca02"] and len(press) == 44
    assert len(brown_files(parse_genres(""))) == 500 - 44
    text = brown_text("a")
    assert text.startswith("The Fulton County Grand Jury said Friday an investigation of Atlanta's")
    assert "/at" not in text and "``" not in text and " ." not in text[:2000]


class CharTokenizer:
    def __call__(self, text, add_special_tokens=False, return_attention_mask=False):
        return {"input_ids": [ord(c) % 256 for c in text]}


def test_windows_are_reproducible_and_checked():
    stream = torch.arange(1000)
    a = calibration_windows(stream, None, nsamples=5, seqlen=64, seed=3)
    b = calibration_windows(stream, None, nsamples=5, seqlen=64, seed=3)
    assert torch.equal(a, b) and a.shape == (5, 64)
    assert (a[:, 1:] - a[:, :-1] == 1).all()  # contiguous windows of the stream
    ev = evaluation_windows(stream, None, nwindows=3, seqlen=100)
    assert torch.equal(ev.reshape(-1), torch.arange(300))
    with pytest.raises(TextTooShortError, match="shorter than one window"):
        calibration_windows(["tiny text"], CharTokenizer(), nsamples=2, seqlen=64, packing=True)
    with pytest.raises(PrunekitError, match="neither 'brown"):
        calibration_windows("no_such_file.txt", CharTokenizer())


def test_piecewise_tokenization_equals_whole_stream(smollm2_tokenizer):
    from prunekit.core.data_sources import _pieces, token_stream

    text = brown_text("a")
    assert len(list(_pieces(text))) >= 3
    whole = smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert token_stream("brown:a", smollm2_tokenizer).tolist() == whole


def test_a_texts_tokens_are_cached_by_text_and_tokenizer(smollm2_tokenizer, tmp_path, monkeypatch):
    """The second stream of the same text and tokenizer is read from the cache (no tokenizer call), and
    equals the first; another text or a damaged entry is tokenized again."""
    from prunekit.core import data_sources
    from prunekit.core.data_sources import token_stream

    monkeypatch.setattr(data_sources, "_stream_file", lambda key: tmp_path / "tokens" / f"{key}.safetensors")
    calls = []

    class Counting:
        backend_tokenizer = smollm2_tokenizer.backend_tokenizer

        def __call__(self, text, **kw):
            calls.append(len(text))
            return smollm2_tokenizer(text, **kw)

    tok = Counting()
    first = token_stream("brown:r", tok)
    assert calls and len(list((tmp_path / "tokens").glob("*.safetensors"))) == 1
    calls.clear()
    again = token_stream("brown:r", tok)
    assert torch.equal(again, first) and again.dtype == torch.long and not calls
    assert first.tolist() == smollm2_tokenizer(brown_text("r"), add_special_tokens=False)["input_ids"]
    token_stream(["another text"], tok)
    assert calls == [len("another text")]
    entry = next((tmp_path / "tokens").glob(f"{data_sources._stream_key(brown_text('r'), tok)}.safetensors"))
    entry.write_bytes(b"not safetensors")
    calls.clear()
    assert torch.equal(token_stream("brown:r", tok), first) and calls  # damaged: tokenized and rewritten
    assert torch.equal(data_sources._cached_stream(data_sources._stream_key(brown_text("r"), tok)), first)
    assert not [p for p in (tmp_path / "tokens").iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_tokenizer_without_a_serialized_form_is_not_cached(tmp_path, monkeypatch):
    from prunekit.core import data_sources
    from prunekit.core.data_sources import token_stream

    monkeypatch.setattr(data_sources, "_stream_file", lambda key: tmp_path / "tokens" / f"{key}.safetensors")
    assert token_stream(["a b c"], CharTokenizer()).numel() > 0
    assert not (tmp_path / "tokens").exists()
