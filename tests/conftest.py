import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def tiny_config(family: str):
    """A 2-block random config of each supported family (hidden 64, so N:M 2:4 and 4:8 fit)."""
    import transformers as t

    common = dict(vocab_size=128, num_hidden_layers=2, hidden_size=64, num_attention_heads=4)
    if family == "llama":
        return t.LlamaConfig(**common, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=64)
    if family == "mistral":
        return t.MistralConfig(**common, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=64)
    if family == "qwen2":
        return t.Qwen2Config(**common, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=64)
    if family == "qwen3":
        return t.Qwen3Config(**common, intermediate_size=128, num_key_value_heads=2, head_dim=16,
                             max_position_embeddings=64)
    if family == "opt":
        return t.OPTConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                           word_embed_proj_dim=64, max_position_embeddings=64)
    if family == "gpt2":
        return t.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    if family == "gpt_neox":
        return t.GPTNeoXConfig(**common, intermediate_size=128, max_position_embeddings=64)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "gemma3_text":  # one key/value head, like Gemma 3 270M
        return t.Gemma3TextConfig(**common, **ids, intermediate_size=128, num_key_value_heads=1, head_dim=16,
                                  max_position_embeddings=64, sliding_window=8, layer_types=["sliding_attention",
                                                                                            "full_attention"])
    if family == "gemma3":  # the multimodal wrapper: the decoder sits in model.language_model
        text = tiny_config("gemma3_text").to_dict()
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                      patch_size=14)
        return t.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    # families outside the table: found by discovery (one-shot only)
    if family == "phi3":  # fused qkv_proj and gate_up_proj, registered after o_proj
        return t.Phi3Config(**common, **ids, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=64)
    if family == "olmo2":
        return t.Olmo2Config(**common, **ids, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=64)
    if family == "gemma":
        return t.GemmaConfig(**common, **ids, intermediate_size=128, num_key_value_heads=1, head_dim=16,
                             max_position_embeddings=64)
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "opt", "gpt2", "gpt_neox", "gemma3_text"]  # gemma3 (multimodal): test_families
DISCOVERED = ["phi3", "olmo2", "gemma"]  # not in the family table


def tiny_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    return model.eval()


def tiny_windows(n: int = 8, seqlen: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def smollm2_path():
    """The embedded SmolLM2-135M converted once into the user cache (~40 s on a fresh machine)."""
    from prunekit.assets import embedded_model_dir

    return embedded_model_dir("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from prunekit.models import load_tokenizer

    return load_tokenizer(smollm2_path)
