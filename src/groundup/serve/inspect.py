"""What the web page shows inside the model: next-token distributions, attention weights,
positional encodings and the token embedding space.

Attention weights come from the model's explicit "math" path (config.attention = "math"), where
softmax(Q Kᵀ / √d_k + mask) is a tensor: a forward hook on each layer's attention dropout (the
identity in eval mode) reads it as it goes by. The model's math is untouched; the inspecting copy
shares the served model's parameters.
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from groundup.errors import GroundupError
from groundup.labs.geometry import heads
from groundup.model import GPT
from groundup.model.positional import sinusoidal_table
from groundup.quantize import match_quantization

TOP = 10  # next-token candidates per position
HEAD_PROBE_SEQUENCES = 8  # random sequences, each repeated twice, on which the heads are scored
PCA_TOKENS = 2000  # at most this many tokens in the embedding projection (the first ids)


class Inspector:
    def __init__(self, model: GPT, tokenizer):
        self.tokenizer = tokenizer
        self.model = model
        self.math_model = GPT(dataclasses.replace(model.config, attention="math"))
        match_quantization(self.math_model, model)  # a quantized run: the same QuantizedLinears
        self.math_model.load_state_dict(model.state_dict(), assign=True)  # the same tensors, not copies
        self.math_model.to(model.token_embedding.weight.device).eval()
        self.lock = threading.Lock()  # the hooks collect into one list: one inspection at a time
        self._head_kinds = None

    def piece(self, i: int) -> str:
        return self.tokenizer.token_bytes(i).decode("utf-8", errors="replace")

    @torch.inference_mode()
    def attention_and_logits(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (T,) → (attention weights (n_layer, n_head, T, T), logits (T, V))."""
        captured = []
        with self.lock:
            hooks = [block.attention.attention_dropout.register_forward_hook(lambda m, inp, out: captured.append(out[0]))
                     for block in self.math_model.blocks]
            try:
                device = self.math_model.token_embedding.weight.device
                logits = self.math_model(torch.tensor([ids], device=device))[0][0]
            finally:
                for h in hooks:
                    h.remove()
        return torch.stack(captured).float().cpu(), logits.float().cpu()

    def inspect(self, ids: list[int]) -> dict:
        """Per position t: the top-10 next tokens p(· | ids[:t+1]) and every layer/head's attention
        row t over positions 0..t."""
        attention, logits = self.attention_and_logits(ids)
        probs = torch.softmax(logits, dim=-1)  # (T, V)
        top_p, top_i = torch.topk(probs, min(TOP, probs.shape[-1]), dim=-1)
        return {
            "ids": ids,
            "pieces": [self.piece(i) for i in ids],
            # p(ids[t] | ids[:t]): how likely the model found each token (None for the first)
            "token_probs": [None] + [float(probs[t - 1, ids[t]]) for t in range(1, len(ids))],
            "top": [[{"id": int(i), "piece": self.piece(int(i)), "prob": float(p)} for p, i in zip(ps, is_)]
                    for ps, is_ in zip(top_p, top_i)],
            "attention": attention.tolist(),  # [layer][head][query t][key s], zero for s > t
            "n_layer": attention.shape[0], "n_head": attention.shape[1],
            **self.head_kinds(),
        }

    def head_kinds(self) -> dict:
        """Each head's previous-token, induction and first-token (sink) scores, measured as the
        geometry lab measures them (groundup.labs.geometry.heads) on random token sequences repeated
        twice, and the kinds whose thresholds they reach. Measured once per server."""
        if self._head_kinds is None:
            c = self.math_model.config
            vocab = [i for i in range(c.vocab_size) if i != self.tokenizer.eot_id]
            L = min(32, c.block_size // 2)
            repeated = heads.repeated_random_tokens(vocab, L, HEAD_PROBE_SEQUENCES, seed=0)
            repeated = repeated.to(self.math_model.token_embedding.weight.device)
            with self.lock, torch.inference_mode():
                scores = heads.head_scores(self.math_model, repeated, repeated)
            self._head_kinds = {"head_scores": scores, "head_kinds": heads.classify(scores),
                                "head_thresholds": dict(heads.THRESHOLDS)}
        return self._head_kinds

    def positions(self) -> dict:
        """The sinusoid table PE (block_size, C) and PE(p)·PE(q) as a function of the offset p − q
        (= Σᵢ cos(ωᵢ (p − q)): it depends on the offset only), from q = 0."""
        c = self.model.config
        table = sinusoidal_table(c.block_size, c.n_embd)  # (T, C)
        dots = table @ table[0]  # PE(k)·PE(0), k = 0..T-1
        return {"model_positional": c.positional, "block_size": c.block_size, "n_embd": c.n_embd,
                "table": table.tolist(), "offsets": list(range(c.block_size)), "dots": dots.tolist()}

    def embeddings(self) -> torch.Tensor:
        return self.model.token_embedding.weight.detach().float().cpu()

    def pca(self) -> dict:
        """Token embeddings projected on their first two principal components."""
        E = self.embeddings()[:PCA_TOKENS]
        centred = E - E.mean(0)
        _, S, Vt = torch.linalg.svd(centred, full_matrices=False)
        xy = centred @ Vt[:2].T  # (N, 2)
        explained = (S[:2] ** 2 / (S ** 2).sum()).tolist()
        return {"ids": list(range(len(E))), "pieces": [self.piece(i) for i in range(len(E))],
                "xy": xy.tolist(), "explained": explained}

    def nearest(self, token: str, k: int = 10) -> dict:
        """The k tokens whose embeddings have the highest cosine similarity with `token`'s."""
        ids = self.tokenizer.encode(token, allowed_special="none") if token else []
        if len(ids) != 1:
            raise GroundupError(f"{token!r} is {len(ids)} tokens; choose text that is exactly one token")
        E = self.embeddings()
        unit = E / E.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cos = unit @ unit[ids[0]]
        cos[ids[0]] = -2  # not itself
        values, order = torch.topk(cos, min(max(1, k), len(E) - 1))
        return {"token": token, "id": ids[0],
                "nearest": [{"id": int(i), "piece": self.piece(int(i)), "cosine": float(v)} for v, i in zip(values, order)]}
