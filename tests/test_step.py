"""The one training step (groundup.train.step) and loop (groundup.train.loop), both engines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from groundup.config import ModelConfig, RunConfig, TrainConfig
from groundup.errors import ConfigError
from groundup.train.engine import build_engine
from groundup.train.loop import Hooks, fit
from groundup.train.step import Verdict, train_step

MODEL = ModelConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)


def engine_for(name: str = "torch", dtype: str = "float64", **train):
    config = RunConfig(model=MODEL, train=TrainConfig(engine=name, dtype=dtype, seed=3, **train))
    return build_engine(config, torch.device("cpu"))


def batch(engine, seed: int = 0, size: int = 4):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, MODEL.vocab_size, (size, MODEL.block_size), dtype=np.int64)
    y = rng.integers(0, MODEL.vocab_size, (size, MODEL.block_size), dtype=np.int64)
    return engine.batch(x, y)


def snapshot(engine) -> dict[str, torch.Tensor]:
    weights, moments, _ = engine.checkpoint_tensors()
    return {k: v.detach().clone() for k, v in {**weights, **moments}.items()}


@pytest.mark.parametrize("name", ["torch", "numpy"])
def test_a_vetoed_step_leaves_weights_and_adam_moments_untouched(name):
    engine = engine_for(name)
    train_step(engine, [batch(engine, 0)], lr=1e-2, grad_clip=1.0)  # Adam state exists now
    before = snapshot(engine)
    result = train_step(engine, [batch(engine, 1)], lr=1e-2, grad_clip=1.0, check=lambda loss, norm: Verdict("skip", "test"))
    assert not result.applied and result.verdict.reason == "test"
    after = snapshot(engine)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # ... and the vetoed step's gradients are gone: the next step starts from zero
    applied = train_step(engine, [batch(engine, 2)], lr=1e-2, grad_clip=1.0)
    assert applied.applied and not all(torch.equal(before[k], snapshot(engine)[k]) for k in before)


def test_the_loss_is_a_parameter_of_the_step():
    plain, tripled = engine_for(), engine_for()  # same seed: same initial weights
    b = batch(plain)
    r1 = train_step(plain, [b], lr=1e-3, grad_clip=0.0)
    r3 = train_step(tripled, [b], lr=1e-3, grad_clip=0.0, loss=lambda model, bt: 3.0 * model(*bt)[1])
    assert r3.loss == pytest.approx(3 * r1.loss, rel=1e-12)
    assert r3.grad_norm == pytest.approx(3 * r1.grad_norm, rel=1e-12)  # ∇(3L) = 3∇L


@pytest.mark.parametrize("name", ["torch", "numpy"])
def test_micro_batches_accumulate_to_the_gradient_of_the_whole_batch(name):
    whole, split = engine_for(name), engine_for(name)
    x, y = batch(whole, 5, size=8)
    one = train_step(whole, [(x, y)], lr=1e-3, grad_clip=0.0)
    two = train_step(split, [(x[:4], y[:4]), (x[4:], y[4:])], lr=1e-3, grad_clip=0.0)
    assert two.loss == pytest.approx(one.loss, rel=1e-12)  # mean of equal-sized halves = mean of the whole
    assert two.grad_norm == pytest.approx(one.grad_norm, rel=1e-10)
    a, b = snapshot(whole), snapshot(split)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-12


def test_clipping_scales_the_gradient_to_the_threshold():
    engine = engine_for()
    seen = {}
    original = engine.update

    def spy():  # the gradients as the optimizer receives them
        seen["norm"] = float(torch.sqrt(sum((p.grad ** 2).sum() for p in engine.parameters)))
        original()

    engine.update = spy
    result = train_step(engine, [batch(engine)], lr=1e-3, grad_clip=0.05)
    assert result.grad_norm > 0.05  # (a fresh model's gradient is larger than this threshold)
    assert seen["norm"] == pytest.approx(0.05, rel=1e-5)  # g · clip / (‖g‖ + 1e-6)
    below = train_step(engine, [batch(engine, 1)], lr=1e-3, grad_clip=1e6)
    assert seen["norm"] == pytest.approx(below.grad_norm, rel=1e-12)  # below the threshold: unchanged


def test_the_numpy_engine_refuses_a_loss_it_has_no_backward_for():
    engine = engine_for("numpy")
    with pytest.raises(ConfigError, match="cross-entropy only"):
        train_step(engine, [batch(engine)], lr=1e-3, grad_clip=1.0, loss=lambda model, b: 0.0)


def test_both_engines_take_the_same_steps():
    results = {}
    for name in ("torch", "numpy"):
        engine = engine_for(name)
        seeds = iter(range(100))
        results[name] = fit(engine, lambda: batch(engine, next(seeds)), 5, lr=lambda step: 1e-3 * (step + 1))
    assert np.allclose(results["torch"], results["numpy"], rtol=0, atol=1e-10)


def test_fit_follows_the_schedule_calls_back_and_lets_a_hook_stop_it():
    engine = engine_for(dtype="float32")
    lrs, calls = [], []

    def schedule(step):
        lrs.append(step)
        return 1e-3

    losses = fit(engine, lambda: batch(engine), 6, lr=schedule, every=2, on_every=calls.append)
    assert lrs == [0, 1, 2, 3, 4, 5] and calls == [2, 4, 6] and len(losses) == 6

    class StopAtThree(Hooks):
        def after_step(self, step, result):
            return None if step == 3 else step

    assert len(fit(engine, lambda: batch(engine), 10, lr=1e-3, hooks=StopAtThree())) == 3
    assert len(fit(engine, lambda: batch(engine), 10, lr=1e-3, start=7)) == 3


def test_a_hook_can_roll_the_step_back():
    engine = engine_for(dtype="float32")
    taken = []

    class RollBackOnce(Hooks):
        rolled = False

        def after_step(self, step, result):
            taken.append(step)
            if step == 4 and not self.rolled:
                self.rolled = True
                return 2
            return step

    fit(engine, lambda: batch(engine), 5, lr=1e-3, hooks=RollBackOnce())
    assert taken == [1, 2, 3, 4, 3, 4, 5]


def test_dataclass_replace_keeps_engine_choice_validated():
    with pytest.raises(ConfigError, match="train.engine must be 'torch' or 'numpy'"):
        dataclasses.replace(TrainConfig(), engine="jax")


def _update_calls(path):
    """(line, what) of every call that changes weights or gradients the way a training loop does:
    a tensor's .backward() with no arguments, an optimizer's .step(), gradient clipping."""
    import ast

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, owner = node.func.attr, ast.unparse(node.func.value)
            if name == "backward" and not node.args and not node.keywords:
                yield node.lineno, f"{owner}.backward()"
            elif name == "step" and "optim" in owner.lower():
                yield node.lineno, f"{owner}.step()"
            elif name in ("clip_grad_norm_", "clip_grads_with_norm_"):
                yield node.lineno, f"{owner}.{name}()"


def test_weights_change_only_through_the_one_step():
    """No module repeats forward → backward → clip → update: autograd's backward and the optimizer's
    update are called in train/engine.py (the engines' arithmetic of train_step) alone, and clipping
    in train/optim.py, which the engine calls."""
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "groundup"
    allowed = {"train/engine.py", "train/optim.py"}
    timing_only = {"labs/attention_cost.py": "module(x).sum().backward()"}  # times a backward pass; no update
    found = [f"{path.relative_to(src)}:{line}: {what}" for path in sorted(src.rglob("*.py"))
             if str(path.relative_to(src)) not in allowed for line, what in _update_calls(path)
             if timing_only.get(str(path.relative_to(src))) != what]
    assert not found, "training outside groundup.train.step:\n" + "\n".join(found)
