"""Evaluation: perplexity, zero-shot tasks (``tasks/``) and their scorer, lm-eval-harness, the report with
plots, sparsity report, latency and memory."""
