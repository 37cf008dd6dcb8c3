"""Speed receipt of a structured prune: parameters, FLOPs per token, CPU prefill latency and decode speed.

Dense and pruned models are timed in the same process, interleaved run by run (dense, pruned,
dense, ...), so background load hits both alike; medians and pruned/dense ratios are reported
together with the torch thread count.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class Speed:
    parameters: int
    flops_per_token: float  # a token at context ``seq_len / 2``: all matmuls (lm_head too) + attention
    prefill_s: float  # median seconds for one 1 x seq_len forward
    decode_tokens_per_s: float  # median tokens/s of greedy decoding with a KV cache


@dataclass
class SpeedReceipt:
    dense: Speed
    pruned: Speed
    threads: int
    runs: int
    seq_len: int
    decode_tokens: int

    @property
    def parameter_ratio(self) -> float:
        return self.pruned.parameters / self.dense.parameters

    @property
    def flops_ratio(self) -> float:
        return self.pruned.flops_per_token / self.dense.flops_per_token

    @property
    def prefill_speedup(self) -> float:
        return self.dense.prefill_s / self.pruned.prefill_s

    @property
    def decode_speedup(self) -> float:
        return self.pruned.decode_tokens_per_s / self.dense.decode_tokens_per_s

    def to_dict(self) -> dict:
        return {**asdict(self), "parameter_ratio": self.parameter_ratio, "flops_ratio": self.flops_ratio,
                "prefill_speedup": self.prefill_speedup, "decode_speedup": self.decode_speedup}

    def summary(self) -> str:
        d, p = self.dense, self.pruned
        return (f"parameters {d.parameters:,} -> {p.parameters:,} ({self.parameter_ratio:.2f}x); "
                f"GFLOPs/token {d.flops_per_token / 1e9:.3f} -> {p.flops_per_token / 1e9:.3f}; "
                f"1x{self.seq_len} prefill {d.prefill_s * 1e3:.0f} -> {p.prefill_s * 1e3:.0f} ms "
                f"({self.prefill_speedup:.2f}x faster); {self.decode_tokens}-token greedy decode "
                f"{d.decode_tokens_per_s:.1f} -> {p.decode_tokens_per_s:.1f} tok/s ({self.decode_speedup:.2f}x); "
                f"median of {self.runs} interleaved runs, {self.threads} torch threads")


def linear_weights(model: nn.Module) -> int:
    """Multiply-accumulates per token of all linear layers (GPT-2's transposed ones too), lm_head included."""
    from prunekit.core.families import is_linear

    return sum(m.weight.numel() for m in model.modules() if is_linear(m))


def flops_per_token(model: nn.Module, seq_len: int = 512) -> float:
    """2 x linear weights + causal attention (QK^T and AV: 2 x 2 x heads*head_dim x mean context)."""
    from prunekit.core.families import adapter_for

    adapter = adapter_for(model)
    context = (seq_len + 1) / 2
    attention = sum(4 * n_q * hd * context for n_q, _, hd in
                    (adapter.attention_counts(i) for i in range(len(adapter.blocks))))
    return 2.0 * linear_weights(model) + attention


@torch.inference_mode()
def _prefill(model: nn.Module, ids: torch.Tensor) -> float:
    """One prefill as ``generate`` runs it: the whole prompt, logits of the last position only."""
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return time.perf_counter() - t0


def cache_keyword(model: nn.Module) -> str:
    """The name ``model.forward`` takes its KV cache by: ``cache`` (transformers 5.2x renamed it; the old
    ``past_key_values`` warns and goes in 5.40) or ``past_key_values`` (earlier versions)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def _decode(model: nn.Module, prompt: torch.Tensor, tokens: int) -> float:
    """Greedy decoding of ``tokens`` tokens after ``prompt``; returns tokens/s of the decode steps.
    The one cache object is filled in place by every step."""
    from transformers import DynamicCache

    kv = {cache_keyword(model): DynamicCache()}
    out = model(input_ids=prompt, use_cache=True, **kv)
    nxt = out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(tokens):
        out = model(input_ids=nxt, use_cache=True, **kv)
        nxt = out.logits[:, -1:].argmax(-1)
    return tokens / (time.perf_counter() - t0)


def speed_receipt(dense: nn.Module, pruned: nn.Module, seq_len: int = 512, decode_tokens: int = 64,
                  runs: int = 5, prompt_len: int = 16, seed: int = 0) -> SpeedReceipt:
    """Time ``dense`` and ``pruned`` interleaved; one warm-up run each is discarded."""
    vocab = dense.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, seq_len), generator=gen)
    prompt = ids[:, :prompt_len]
    times = {"dense": ([], []), "pruned": ([], [])}
    models = {"dense": dense.eval(), "pruned": pruned.eval()}
    for run in range(runs + 1):
        for name, model in models.items():
            p = _prefill(model, ids)
            d = _decode(model, prompt, decode_tokens)
            if run:  # run 0 warms up
                times[name][0].append(p)
                times[name][1].append(d)

    def speed(name: str) -> Speed:
        model = models[name]
        return Speed(sum(p.numel() for p in model.parameters()), flops_per_token(model, seq_len),
                     statistics.median(times[name][0]), statistics.median(times[name][1]))

    return SpeedReceipt(speed("dense"), speed("pruned"), torch.get_num_threads(), runs, seq_len, decode_tokens)
