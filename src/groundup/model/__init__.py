"""The PyTorch engine: the GPT model, named after the concepts it implements."""

from groundup.model.attention import CausalSelfAttention, KVCache
from groundup.model.block import Block
from groundup.model.feedforward import FeedForward
from groundup.model.gpt import GPT

__all__ = ["GPT", "Block", "CausalSelfAttention", "FeedForward", "KVCache"]
