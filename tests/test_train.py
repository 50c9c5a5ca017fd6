"""Training: it learns, it resumes exactly, it writes a complete run directory, it refuses bad input."""

from __future__ import annotations

import json

import pytest
import torch

from groundup.errors import CheckpointError
from groundup.train import checkpoint as ckpt
from groundup.train.schedule import learning_rate
from groundup.train.trainer import train
from groundup.util.metrics import read_metrics

from conftest import assert_clean_error, run_cli
from helpers import TINY, tiny_config


def test_schedule_warms_up_then_decays_by_cosine():
    lrs = [learning_rate(s, 1e-3, 1e-4, 10, 100) for s in range(120)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-9)  # halfway through the cosine
    assert lrs[100] == lrs[119] == 1e-4
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_training_writes_a_complete_run_directory_and_learns(tmp_path):
    result = train(tiny_config("max_steps=60", "eval_interval=30", "learning_rate=3e-3"), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ["config.json", "tokenizer.json", "model.safetensors", "optimizer.safetensors", "state.json",
                 "metrics.jsonl", "loss.png"]:
        assert (run / name).exists(), name
    records = read_metrics(run / "metrics.jsonl")
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [30, 60]
    first = next(r["loss"] for r in records if "loss" in r)
    assert evals[-1]["val_loss"] < 3.5 < first  # from ≈ ln(76) = 4.33 (uniform) to below 3.5
    assert all(r["tokens_per_s"] > 0 for r in records if "loss" in r)
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 60 and state["sampler"]["position"] == 60 and "torch_cpu" in state["rng"]
    assert result.val_loss == evals[-1]["val_loss"]


def test_resume_continues_the_same_loss_curve_bit_for_bit(tmp_path):
    """20 steps straight vs. 10 steps, stop, resume to 20: same batches, same RNG, same weights."""
    # lr_decay_steps is fixed, so stopping at 10 doesn't change the schedule (as for a killed run).
    straight = train(tiny_config("dropout=0.1", "lr_decay_steps=20"), tmp_path / "a", progress=False)
    train(tiny_config("dropout=0.1", "lr_decay_steps=20", "max_steps=10"), tmp_path / "b", progress=False)
    config = ckpt.read_run_config(tmp_path / "b").replace(max_steps=20)
    resumed = train(config, tmp_path / "b", resume=True, progress=False)
    losses = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d / "metrics.jsonl") if "loss" in r]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    for name, tensor in straight.model.weights().items():
        assert torch.equal(tensor, resumed.model.weights()[name]), name


def test_checkpoints_keep_the_last_k(tmp_path):
    train(tiny_config("max_steps=40", "checkpoint_interval=5", "keep_checkpoints=2"), tmp_path / "r", progress=False)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "r")]
    assert names == ["step_00000040", "step_00000035"]


def test_refuses_to_overwrite_a_run(tmp_path):
    train(tiny_config("max_steps=2"), tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="--resume"):
        train(tiny_config("max_steps=2"), tmp_path / "r", progress=False)


def test_checkpoint_whose_shapes_do_not_match_its_config_is_a_clear_error(tmp_path):
    train(tiny_config("max_steps=2"), tmp_path / "r", progress=False)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    cfg["model"]["n_embd"] = 64
    (tmp_path / "r" / "config.json").write_text(json.dumps(cfg))
    r = run_cli("sample", "--run", str(tmp_path / "r"), "--prompt", "A", "--max-new-tokens", "5")
    assert_clean_error(r, "token_embedding.weight", "has shape", "does not match its config")


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_good_one(tmp_path):
    train(tiny_config("max_steps=20", "checkpoint_interval=10"), tmp_path / "r", progress=False)
    newest = ckpt.list_checkpoints(tmp_path / "r")[0]
    (tmp_path / "r" / "model.safetensors").unlink()
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    warnings = []
    directory, state = ckpt.find_checkpoint(tmp_path / "r", warn=warnings.append)
    assert directory.name == "step_00000010" and state["step"] == 10
    assert any("step_00000020" in w and "checksum" in w for w in warnings)


def test_cli_train_errors_are_clean(tmp_path):
    assert_clean_error(run_cli("train", "--config", str(tmp_path / "none.toml"), "--out", str(tmp_path / "r")), "does not exist")
    assert_clean_error(run_cli("train", "--set", "max_stpes=3", "--out", str(tmp_path / "r")), "did you mean max_steps")
    assert_clean_error(run_cli("train", "--resume", str(tmp_path / "missing")), "does not exist")
    assert_clean_error(run_cli("train"), "--out")
    assert_clean_error(run_cli("sample", "--run", str(tmp_path / "missing")), "does not exist")


def test_python_m_groundup_trains_with_time_budget(tmp_path):
    r = run_cli("train", *[a for s in TINY for a in ("--set", s)], "--set", "max_steps=100000",
                "--time-budget", "3", "--out", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert "time budget" in r.stdout and "resume with" in r.stdout
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert 0 < state["step"] < 100000


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """2 micro-batches of 4 accumulate exactly the gradient of one batch of 8 (same windows)."""
    from groundup.data import BatchSampler
    from groundup.model import GPT
    from groundup.train.optim import configure_adamw
    from groundup.train.schedule import lr_at
    from groundup.train.trainer import load_data

    config = tiny_config("max_steps=1", "batch_size=4", "grad_accum_steps=2", "dtype=float64", "grad_clip=0")
    accumulated = train(config, tmp_path / "acc", progress=False).model

    data = load_data(config)
    c = ckpt.read_run_config(tmp_path / "acc")
    torch.manual_seed(c.train.seed)
    reference = GPT(c.model).double()
    sampler = BatchSampler(data.train, c.model.block_size, 4, seed=c.train.seed)
    x, y = (torch.from_numpy(__import__("numpy").concatenate(a)) for a in zip(sampler.batch(0), sampler.batch(1)))
    optimizer = configure_adamw(reference, c.train, torch.device("cpu"))
    for group in optimizer.param_groups:
        group["lr"] = lr_at(0, c.train)
    reference(x, y)[1].backward()
    grads = {n: p.grad.clone() for n, p in reference.named_parameters()}
    optimizer.step()
    # Adam is blind to the gradient's scale, so compare the first moment too: m₁ = (1 − β₁)·g.
    moments = ckpt.read_tensors(tmp_path / "acc" / "optimizer.safetensors")
    for name, g in grads.items():
        torch.testing.assert_close(moments[f"exp_avg.{name}"], (1 - c.train.beta1) * g, rtol=1e-9, atol=1e-14, msg=name)
    for name, tensor in reference.weights().items():
        torch.testing.assert_close(accumulated.weights()[name], tensor, rtol=1e-10, atol=1e-12, msg=name)


def test_cpu_training_steps_do_not_page_fault_their_activations():
    """keep_freed_memory(): a training step reuses the process's memory instead of fresh pages."""
    import resource

    from groundup.config import ModelConfig, TrainConfig
    from groundup.model import GPT
    from groundup.train.optim import configure_adamw
    from groundup.util.device import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc")
    model = GPT(ModelConfig(vocab_size=76))
    optimizer = configure_adamw(model, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, 76, (12, 64))

    def step():
        model(x, x)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    faults_per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    assert faults_per_step < 250, faults_per_step  # ≈ 780 per step without it; 9-70 seen with it
