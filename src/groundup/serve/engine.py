"""Continuous batching: many requests share one forward pass per decoding step.

One scheduler thread owns the model and a KV cache with `max_batch` slots (rows). Every step:

  1. admit   waiting requests take free slots; each new prompt is prefilled into its own row
  2. sample  every active sequence draws its next token from its last logits (sample.draw_token)
  3. retire  finished or abandoned sequences leave; the last row moves into the hole, so the
             active sequences always fill rows 0..n-1 of the cache
  4. decode  ONE forward pass over the n active rows: each row feeds its new token at its own
             position (GPT.forward with a (n,) tensor of positions), attending over its own row

A request waits in a bounded queue; when the queue is full, submit() refuses (HTTP 429).
Each sequence's prompt + max_tokens fits the context window (the API checks), so no window ever
slides here.
"""

from __future__ import annotations

import codecs
import collections
import itertools
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from groundup.errors import GroundupError
from groundup.sample import SamplingSettings, draw_token, seeded_generator


class QueueFull(GroundupError):
    """Every slot is busy and the waiting queue is full: try again later (HTTP 429)."""


@dataclass
class TokenOut:
    """One generated token as a client sees it: its id, the text it adds (after stop handling),
    log p(token) under the model (temperature 1, before top-k/top-p) and the top alternatives."""

    token_id: int
    text: str
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # [(token id, log p)] most likely first


@dataclass
class Job:
    """One request: what to generate, and `emit(event)` to hand results back (from the scheduler
    thread). Events: ("token", TokenOut) … then ("done", finish_reason) or ("error", message)."""

    prompt_ids: list[int]
    settings: SamplingSettings
    emit: Callable[[tuple], None]
    stop: list[str] = field(default_factory=list)
    top_logprobs: int | None = None  # None: no logprobs; 0: the chosen token's only
    cancelled: bool = False  # set by the client side (it disconnected): the slot is freed next step


class _Sequence:
    """A job in a slot: its tokens so far, the pending logits, and the text not yet released
    (held back while it could still be the start of a stop string)."""

    def __init__(self, job: Job, eot_id: int | None):
        self.job = job
        self.length = len(job.prompt_ids)  # positions in the cache
        self.generated = 0
        self.generator = seeded_generator(job.settings.seed)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # all generated text
        self.released = 0  # characters of self.text already sent
        self.pending: list[tuple[TokenOut, int]] = []  # (token, end of its text in self.text)
        self.eot_id = eot_id
        self.logits: torch.Tensor | None = None
        self.finish_reason: str | None = None

    def accept(self, token: int, piece: str, logprob, top) -> None:
        """Add one drawn token; release what can no longer be part of a stop string."""
        self.generated += 1
        self.last_token = token
        if token == self.eot_id:
            self.finish_reason = "stop"
        else:
            self.text += piece
            self.pending.append((TokenOut(token, "", logprob, top), len(self.text)))
            cut = first_stop(self.text, self.job.stop, max(0, self.released - longest(self.job.stop)))
            if cut is not None:
                self.finish_reason = "stop"
                return self.release(cut)
        if self.generated >= self.job.settings.max_new_tokens and self.finish_reason is None:
            self.finish_reason = "length"
        if self.finish_reason is None:
            return self.release(len(self.text) - held_back(self.text, self.job.stop))
        tail = self.decoder.decode(b"", final=True)  # an unfinished UTF-8 character becomes U+FFFD
        if tail and self.pending:
            self.text += tail
            self.pending[-1] = (self.pending[-1][0], len(self.text))
        self.release(len(self.text))

    def release(self, upto: int) -> None:
        """Send every pending token whose text ends at or before `upto`; once finished, all of
        them, cut at `upto` (the start of a stop string; tokens wholly inside it are not sent)."""
        while self.pending and (self.pending[0][1] <= upto or self.finish_reason):
            out, end = self.pending.pop(0)
            if self.released >= upto and end > upto:
                continue
            out.text = self.text[self.released:min(end, upto)]
            self.released = max(self.released, min(end, upto))
            self.job.emit(("token", out))


def first_stop(text: str, stops: list[str], start: int) -> int | None:
    """Index in `text` where the earliest stop string begins (searching from `start`), or None."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could still grow into a stop string."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def longest(stops: list[str]) -> int:
    return max((len(s) for s in stops), default=0)


class Scheduler:
    """The decoding loop in its own thread. `submit(job)` from any thread; `close()` to stop."""

    def __init__(self, model, tokenizer, max_batch: int = 16, max_waiting: int = 64,
                 after_step: Callable[[], None] = lambda: None):
        self.model = model
        self.after_step = after_step  # called once per step, after every emit of it (hand events over)
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.cache = model.new_cache(max_batch)
        self.device = model.token_embedding.weight.device
        self.waiting: collections.deque[Job] = collections.deque()
        self.active: list[_Sequence] = []  # active[i] lives in cache row i
        self.wake = threading.Condition()
        self.running = True
        self.steps = 0  # batched decoding steps run (for /health and the tests)
        self.thread = threading.Thread(target=self._loop, name="groundup-scheduler", daemon=True)
        self.thread.start()

    # ---- the client side -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.wake:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"the server is busy ({self.max_batch} sequences running, "
                                f"{len(self.waiting)} waiting); retry in a moment")
            self.waiting.append(job)
            self.wake.notify()

    def stats(self) -> dict:
        return {"active": len(self.active), "waiting": len(self.waiting), "max_batch": self.max_batch,
                "max_waiting": self.max_waiting, "steps": self.steps}

    def close(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        self.thread.join(timeout=10)

    # ---- the scheduler thread ----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.wake:
                while self.running and not self.waiting and not self.active:
                    self.wake.wait()
                if not self.running:
                    break
                admitted = [self.waiting.popleft() for _ in range(min(len(self.waiting), self.max_batch - len(self.active)))]
            try:
                self._step(admitted)
            except Exception as e:  # never leave clients hanging: fail the sequences in flight
                for seq in self.active:
                    seq.job.emit(("error", f"generation failed: {type(e).__name__}: {e}"))
                self.active = []
            self.after_step()
        for seq in self.active:
            seq.job.emit(("error", "the server is shutting down"))
        for job in self.waiting:
            job.emit(("error", "the server is shutting down"))
        self.after_step()

    @torch.inference_mode()
    def _step(self, admitted: list[Job]) -> None:
        for job in admitted:  # 1. admit: prefill each new prompt into the next free row
            if job.cancelled:
                continue
            try:
                seq = _Sequence(job, self.tokenizer.eot_id)
                row = len(self.active)
                ids = torch.tensor([job.prompt_ids], device=self.device)
                seq.logits = self.model(ids, cache=self.cache.rows(row, row + 1), start=0)[0][0, -1]
            except Exception as e:  # this request fails alone
                job.emit(("error", f"generation failed: {type(e).__name__}: {e}"))
                continue
            self.active.append(seq)
        for seq in self.active:  # 2. sample
            if seq.job.cancelled:
                seq.finish_reason = "cancelled"
                continue
            try:
                token = draw_token(seq.logits, seq.job.settings, seq.generator)
                logprob, top = _logprobs(seq.logits, token, seq.job.top_logprobs)
                seq.accept(token, seq.decoder.decode(self.tokenizer.token_bytes(token)), logprob, top)
            except Exception as e:  # this sequence fails alone; the others go on
                seq.job.emit(("error", f"generation failed: {type(e).__name__}: {e}"))
                seq.finish_reason = "cancelled"
        self._retire()  # 3.
        if not self.active:
            return
        n = len(self.active)  # 4. decode: one forward pass for every active row
        tokens = torch.tensor([[seq.last_token] for seq in self.active], device=self.device)  # (n, 1)
        positions = torch.tensor([seq.length for seq in self.active], device=self.device)
        logits = self.model(tokens, cache=self.cache.rows(0, n), start=positions)[0][:, -1]  # (n, V)
        for seq, row_logits in zip(self.active, logits):
            seq.logits = row_logits
            seq.length += 1
        self.steps += 1

    def _retire(self) -> None:
        """Drop finished sequences; move the last row into each hole so rows 0..n-1 stay active."""
        row = 0
        while row < len(self.active):
            seq = self.active[row]
            if seq.finish_reason is None:
                row += 1
                continue
            if seq.finish_reason != "cancelled":
                seq.job.emit(("done", seq.finish_reason))
            last = len(self.active) - 1
            if row != last:
                self.cache.keys[:, row] = self.cache.keys[:, last]
                self.cache.values[:, row] = self.cache.values[:, last]
                self.active[row] = self.active[last]
            self.active.pop()


def _logprobs(logits: torch.Tensor, token: int, top_n: int | None):
    """log softmax(logits)[token] and the top_n (id, log p) pairs; (None, None) when not asked."""
    if top_n is None:
        return None, None
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = None
    if top_n > 0:
        values, ids = torch.topk(logp, min(top_n, logp.numel()))
        top = list(zip(ids.tolist(), values.tolist()))
    return float(logp[token]), top


_ids = itertools.count()


def next_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"
