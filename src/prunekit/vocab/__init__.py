"""Vocabulary pruning: keep the token ids a corpus needs, drop the other embedding and output-head rows,
rewrite the tokenizer (``prunekit vocab``, recipe steps of kind ``vocab``)."""

from prunekit.vocab.prune import KeepSet, VocabResult, keep_set, map_ids, prune_vocab, read_keep_file

__all__ = ["KeepSet", "VocabResult", "keep_set", "map_ids", "prune_vocab", "read_keep_file"]
