"""The NumPy engine's optimisers and trainer: the optimisers step as torch.optim does, 20 training
steps follow the PyTorch engine's curve in float64, runs resume exactly, and checkpoints move
between the engines and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from groundup.data import BatchSampler
from groundup.engines.numpy import SGD, Adam, AdamW, Parameter, clip_grad_norm
from groundup.engines.numpy.training import check_train_config
from groundup.errors import ConfigError
from groundup.model import GPT as TorchGPT
from groundup.train import checkpoint as ckpt
from groundup.train.optim import configure_adamw
from groundup.train.schedule import lr_at
from groundup.train.trainer import load_data, resolve_vocab, train
from groundup.util.metrics import read_metrics

from conftest import assert_clean_error, run_cli
from helpers import TINY, tiny_config


# ---- optimisers against torch.optim ----------------------------------------------------------------
def run_both(make_numpy, make_torch, steps: int = 6, lrs=(1e-2, 3e-2, 5e-3)):
    """Take the same steps, on the same gradients, with both optimisers; return (numpy, torch) parameters."""
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (5,)]
    params = [Parameter(rng.standard_normal(s)) for s in shapes]
    tensors = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    ours, theirs = make_numpy(params), make_torch(tensors)
    for step in range(steps):
        lr = lrs[step % len(lrs)]
        for p, t in zip(params, tensors):
            g = rng.standard_normal(p.shape)
            p.grad[...] = g
            t.grad = torch.tensor(g)
        ours.step(lr)
        for group in theirs.param_groups:
            group["lr"] = lr
        theirs.step()
    return [p.data for p in params], [t.detach().numpy() for t in tensors]


@pytest.mark.parametrize("name", ["sgd", "sgd-momentum", "adam-l2", "adamw"])
def test_optimisers_step_as_torch_optim_does(name):
    makers = {
        "sgd": (lambda ps: SGD(ps), lambda ts: torch.optim.SGD(ts, lr=0.1)),
        "sgd-momentum": (lambda ps: SGD(ps, momentum=0.9, weight_decay=0.1),
                         lambda ts: torch.optim.SGD(ts, lr=0.1, momentum=0.9, weight_decay=0.1)),
        "adam-l2": (lambda ps: Adam(ps, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
                    lambda ts: torch.optim.Adam(ts, lr=0.1, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
        "adamw": (lambda ps: AdamW(ps, betas=(0.9, 0.99), weight_decay=[0.1, 0.0]),
                  lambda ts: torch.optim.AdamW([{"params": [ts[0]], "weight_decay": 0.1}, {"params": [ts[1]], "weight_decay": 0.0}],
                                               lr=0.1, betas=(0.9, 0.99))),
    }
    ours, theirs = run_both(*makers[name])
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("max_norm", [0.5, 100.0], ids=["clips", "leaves-alone"])
def test_gradient_clipping_matches_torch(max_norm):
    rng = np.random.default_rng(1)
    params = [Parameter(np.zeros(s), rng.standard_normal(s)) for s in [(6, 2), (7,)]]
    tensors = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in [(6, 2), (7,)]]
    for p, t in zip(params, tensors):
        t.grad = torch.tensor(p.grad.copy())
    norm = clip_grad_norm(params, max_norm)
    assert norm == pytest.approx(float(torch.nn.utils.clip_grad_norm_(tensors, max_norm)), rel=1e-14)
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-14)


# ---- training: the same curve as the PyTorch engine ----------------------------------------------------
def torch_reference(config, steps: int):
    """The PyTorch engine's training step, written out: same init, batches, schedule, clipping and
    fused AdamW. The loss is taken from the logits in float64 (GPT.forward's own loss is computed in float32)."""
    data = load_data(config)
    config = resolve_vocab(config, data)
    t, m = config.train, config.model
    torch.manual_seed(t.seed)
    model = TorchGPT(m).to(torch.float64)
    optimizer = configure_adamw(model, t, torch.device("cpu"))
    sampler = BatchSampler(data.train, m.block_size, t.batch_size, seed=t.seed)
    losses, norms = [], []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, t)
        x, y = (torch.from_numpy(a) for a in sampler.next_batch())
        logits, _ = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, norms, model


def logged_losses(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("variant", [(), ("positional=rope", "norm=post", "tie_embeddings=false", "grad_clip=1.5")],
                         ids=["sinusoidal-pre-norm-tied", "rope-post-norm-untied"])
def test_first_20_steps_match_the_pytorch_engine_in_float64(tmp_path, variant):
    config = tiny_config("engine=numpy", "dtype=float64", "log_interval=1", "checkpoint_interval=0", "eval_interval=20", *variant)
    result = train(config, tmp_path / "numpy", progress=False)
    reference_losses, norms, reference = torch_reference(config, 20)
    assert any(n > config.train.grad_clip for n in norms) and any(n < config.train.grad_clip for n in norms), \
        "the steps should exercise clipping both on and off"
    losses = [loss for _, loss in logged_losses(tmp_path / "numpy")]
    assert len(losses) == 20
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-8, atol=0)
    assert losses[-1] < losses[0]
    for name, tensor in reference.weights().items():
        got = result.model.weights()[name]
        assert got.dtype == torch.float64
        assert (torch.linalg.norm(got - tensor) / torch.linalg.norm(tensor)).item() <= 1e-8, name


def test_resume_continues_the_same_loss_curve_bit_for_bit(tmp_path):
    straight = train(tiny_config("engine=numpy", "lr_decay_steps=20"), tmp_path / "a", progress=False)
    train(tiny_config("engine=numpy", "lr_decay_steps=20", "max_steps=10"), tmp_path / "b", progress=False)
    resumed = train(ckpt.read_run_config(tmp_path / "b").replace(max_steps=20), tmp_path / "b", resume=True, progress=False)
    assert logged_losses(tmp_path / "a") == logged_losses(tmp_path / "b")
    for name, tensor in straight.model.weights().items():
        assert torch.equal(tensor, resumed.model.weights()[name]), name
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert {"engine", "optimizer_step", "sampler", "rng", "elapsed_s", "tokens_seen"} <= set(state)
    assert state["engine"] == "numpy" and state["optimizer_step"] == 20 and state["sampler"]["position"] == 20
    names = set(ckpt.read_tensors(tmp_path / "b" / ckpt.OPTIMIZER))
    assert names == {f"{kind}.{n}" for kind in ("exp_avg", "exp_avg_sq") for n in straight.model.weights()}


def test_a_pytorch_engine_checkpoint_resumes_in_the_numpy_engine(tmp_path):
    """Weights, Adam moments, step count and sampler position carry over: the numpy engine continues
    the torch engine's curve (float32, so to float32 accuracy)."""
    torch_run = train(tiny_config(), tmp_path / "torch", progress=False)  # checkpoints at steps 10 and 20
    # the same run as it stood at step 10: its step-10 checkpoint only
    shutil.copytree(tmp_path / "torch", tmp_path / "mixed")
    shutil.rmtree(tmp_path / "mixed" / ckpt.CHECKPOINTS / "step_00000020")
    for name in (ckpt.STATE, ckpt.WEIGHTS, ckpt.OPTIMIZER):
        (tmp_path / "mixed" / name).unlink()
    config = ckpt.read_run_config(tmp_path / "mixed").replace(engine="numpy")
    mixed = train(config, tmp_path / "mixed", resume=True, progress=False)
    expected, got = dict(logged_losses(tmp_path / "torch")), dict(logged_losses(tmp_path / "mixed"))
    assert sorted(got) == sorted(expected) == [5, 10, 15, 20]
    assert got[10] == expected[10]  # the torch engine's own steps, kept
    for step in (15, 20):
        assert got[step] == pytest.approx(expected[step], rel=1e-4)
    assert json.loads((tmp_path / "mixed" / "state.json").read_text())["engine"] == "numpy"
    for name, tensor in torch_run.model.weights().items():
        torch.testing.assert_close(mixed.model.weights()[name], tensor, rtol=1e-3, atol=1e-5)


def test_cli_trains_resumes_and_samples_with_the_numpy_engine(tmp_path):
    run = tmp_path / "run"
    sets = [a for kv in TINY for a in ("--set", kv)]
    r = run_cli("train", "--engine", "numpy", *sets, "--max-steps", "10", "--out", str(run))
    assert r.returncode == 0, r.stderr
    assert "engine numpy" in r.stdout and "done: step 10" in r.stdout
    r = run_cli("train", "--resume", str(run), "--max-steps", "20")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and "done: step 20" in r.stdout
    assert [s for s, _ in logged_losses(run)] == [5, 10, 15, 20]
    for name in ["config.json", "tokenizer.json", "model.safetensors", "optimizer.safetensors", "state.json", "loss.png"]:
        assert (run / name).exists(), name
    r = run_cli("sample", "--run", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:") and len(r.stdout.strip()) > len("ROMEO:")


@pytest.mark.parametrize("setting, message", [
    ("dropout=0.1", "does not implement dropout"),
    ("dtype=bfloat16", "float32 or float64"),
    ("device=cuda", "runs on the CPU"),
    ("compile=true", "torch.compile"),
])
def test_unsupported_settings_are_refused_clearly(setting, message):
    with pytest.raises(ConfigError, match=message):
        check_train_config(tiny_config("engine=numpy", setting))


def test_cli_refuses_dropout_without_a_traceback(tmp_path):
    r = run_cli("train", "--engine", "numpy", "--set", "dropout=0.2", "--out", str(tmp_path / "r"))
    assert_clean_error(r, "numpy engine does not implement dropout", "engine=torch")
