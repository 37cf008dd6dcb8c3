"""Evaluation: perplexity, sparsity report, latency and memory."""
