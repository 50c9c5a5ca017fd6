"""Corpora → token files → (x, y) batches."""

from groundup.data.corpora import BUILTIN as BUILTIN_CORPORA
from groundup.data.corpora import Corpus, load_corpus
from groundup.data.sampler import BatchSampler
from groundup.data.tokens import TokenData, build_tokenizer, default_cache_dir, open_prepared, prepare, prepare_cached

__all__ = [
    "BUILTIN_CORPORA", "Corpus", "load_corpus", "BatchSampler", "TokenData", "build_tokenizer",
    "default_cache_dir", "open_prepared", "prepare", "prepare_cached",
]
