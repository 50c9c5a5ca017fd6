"""The one training loop: steps of groundup.train.step.train_step, with hooks around each.

    for step in start .. steps-1:
        hooks.before_step(step)                      (e.g. arm an injected fault)
        batches ← n_micro × next_batch()
        result ← train_step(engine, batches, lr(step), grad_clip, loss, check)
        step ← hooks.after_step(step + 1, result)    (log, evaluate, checkpoint, roll back, or stop: None)
        every `every` steps: on_every(step)           (a lab's measurement)

`groundup train` (groundup.train.trainer) runs it with hooks for evaluation, checkpoints, guards,
metrics, progress and the time budget; a lab runs it with a measurement callback, in memory. Either
way weights change only through train_step.
"""

from __future__ import annotations

from collections.abc import Callable

from groundup.train.step import Batch, Engine, Loss, StepResult, Verdict, train_step


class Hooks:
    """What a caller may do around each step (every method optional: subclass and override)."""

    def should_stop(self) -> bool:
        """Checked before each step (e.g. a signal arrived)."""
        return False

    def before_step(self, step: int) -> None:
        """Before the step that takes the weights from `step` to `step + 1`."""

    def check(self, step: int, loss: float, grad_norm: float) -> Verdict | None:
        """The guard for step `step` (1-based: the step being taken), before its update; None = apply."""
        return None

    def after_step(self, step: int, result: StepResult) -> int | None:
        """After step `step` (1-based count of steps done). Returns the step to continue from (a
        rollback returns an earlier one), or None to stop here."""
        return step


def fit(engine: Engine, next_batch: Callable[[], Batch], steps: int, *, lr: float | Callable[[int], float],
        grad_clip: float = 1.0, loss: Loss | None = None, n_micro: int = 1, start: int = 0,
        hooks: Hooks | None = None, every: int = 0, on_every: Callable[[int], None] | None = None) -> list[float]:
    """Train from step `start` up to `steps` (fewer if a hook stops it); return each step's loss.

    next_batch() → one micro-batch (whatever `loss` takes; (x, y) for cross-entropy).
    lr: a constant, or a function of the 0-based step (a schedule).
    loss(model, batch) → scalar; None = cross-entropy of model(x, y).
    on_every(step) after every `every`-th step (step = steps done so far)."""
    hooks = hooks or Hooks()
    learning_rate = lr if callable(lr) else (lambda _step: lr)
    losses: list[float] = []
    step = start
    while step < steps and not hooks.should_stop():
        hooks.before_step(step)
        batches = [next_batch() for _ in range(n_micro)]
        taking = step + 1
        result = train_step(engine, batches, lr=learning_rate(step), grad_clip=grad_clip, loss=loss,
                            check=lambda loss_value, norm: hooks.check(taking, loss_value, norm))
        losses.append(result.loss)
        after = hooks.after_step(taking, result)
        if after is None:
            break
        step = after
        if every and on_every is not None and step % every == 0:
            on_every(step)
    return losses
