"""Distillation (Hinton et al. 2015; Kim & Rush 2016): the loss and its gradient against autograd of
an independent formula, torch's own KL, finite differences and a case worked by hand; the T → ∞
limit (logit matching); α = 0 is plain cross-entropy exactly; the teacher stays frozen; and
`groundup distill` end to end, bad inputs included."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from groundup import distill as distill_cmd
from groundup.cli import main
from groundup.config import ModelConfig, load_config
from groundup.model import GPT
from groundup.sample import SamplingSettings, generate, load_run, prompt_ids
from groundup.train import checkpoint as ckpt
from groundup.train import trainer
from groundup.train.distill import distill_loss, distillation_loss
from groundup.train.engine import TorchEngine
from groundup.train.loop import fit
from groundup.train.trainer import train

from conftest import assert_clean_error, run_cli
from helpers import tiny_config

# The student's settings on the command line: smaller than the tiny teacher (2 layers, width 32).
STUDENT = ["n_layer=1", "n_head=2", "n_embd=16", "block_size=32", "batch_size=4", "max_steps=8", "eval_interval=4",
           "eval_iters=2", "log_interval=2", "checkpoint_interval=4", "warmup_steps=2", "seed=5", "threads=1"]


def _sets(settings):
    return [arg for s in settings for arg in ("--set", s)]


# ---- the loss ----------------------------------------------------------------------------------------
def reference_loss(z_s, z_t, y, T, alpha, reverse=False):
    """The definition written out with exp, sums and logs (no log_softmax, no cross_entropy)."""
    def softmax(z):
        e = torch.exp(z - z.max(-1, keepdim=True).values)
        return e / e.sum(-1, keepdim=True)

    p_s, p_t = softmax(z_s / T), softmax(z_t / T)
    kl = (p_s * (p_s.log() - p_t.log())).sum(-1) if reverse else (p_t * (p_t.log() - p_s.log())).sum(-1)
    ce = -softmax(z_s).gather(-1, y.unsqueeze(-1)).squeeze(-1).log()
    return alpha * T * T * kl.mean() + (1 - alpha) * ce.mean()


def _logits(seed=0, shape=(2, 3, 7)):
    g = torch.Generator().manual_seed(seed)
    z_s = (torch.randn(*shape, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    z_t = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return z_s, z_t, y


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.5, 0.3), (4.0, 1.0), (0.5, 0.9)])
def test_loss_and_gradient_match_an_independent_formula(T, alpha, reverse):
    z_s, z_t, y = _logits()
    ours = distillation_loss(z_s, z_t, y, T, alpha, reverse)
    (g_ours,) = torch.autograd.grad(ours, z_s)
    ref = reference_loss(z_s, z_t, y, T, alpha, reverse)
    (g_ref,) = torch.autograd.grad(ref, z_s)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)

    # torch's own KL divergence ('batchmean' over the B·T tokens) for the soft term
    V = z_s.size(-1)
    log_p_s, log_p_t = (F.log_softmax(z.reshape(-1, V) / T, -1) for z in (z_s, z_t))
    kl = (F.kl_div(log_p_t, log_p_s, log_target=True, reduction="batchmean") if reverse else
          F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean"))
    torch.testing.assert_close(ours, alpha * T * T * kl + (1 - alpha) * F.cross_entropy(z_s.reshape(-1, V), y.reshape(-1)),
                               rtol=1e-12, atol=1e-12)

    # the gradient in closed form, per token (N = B·T of them):
    #   forward: ∂L/∂z_s = [α·T·(p_s^T − p_t^T) + (1 − α)·(softmax(z_s) − onehot(y))] / N
    #   reverse: α·T·p_s^T ⊙ (r − Σ p_s^T r), r = log p_s^T − log p_t^T, in place of α·T·(p_s^T − p_t^T)
    N = y.numel()
    p_s, p_t = (torch.softmax(z.detach() / T, -1) for z in (z_s, z_t))
    if reverse:
        r = p_s.log() - p_t.log()
        soft = p_s * (r - (p_s * r).sum(-1, keepdim=True))
    else:
        soft = p_s - p_t
    hard = torch.softmax(z_s.detach(), -1) - F.one_hot(y, V)
    torch.testing.assert_close(g_ours, (alpha * T * soft + (1 - alpha) * hard) / N, rtol=1e-10, atol=1e-13)


def test_gradient_matches_finite_differences():
    z_s, z_t, y = _logits(1, (2, 2, 5))
    for reverse in (False, True):
        assert torch.autograd.gradcheck(lambda z: distillation_loss(z, z_t, y, 2.0, 0.7, reverse), (z_s,), eps=1e-6, atol=1e-8)


def test_hand_computed_case():
    """V = 2, one token, T = 2, α = 1/2, target 0. Student logits (0, 0): p_s^T = (1/2, 1/2).
    Teacher logits (2 ln 3, 0): p_t^T = softmax(ln 3, 0) = (3/4, 1/4). CE of (0, 0) at target 0 = ln 2.

    forward: KL(p_t ‖ p_s) = 3/4 ln(3/2) + 1/4 ln(1/2)
             L = ½·4·KL + ½·ln 2 = 3/2 ln(3/2) − ½ ln 2 + ½ ln 2 = 3/2 ln(3/2)
             ∂L/∂z_s = ½·T·(p_s − p_t) + ½·(softmax(z_s) − e_0) = ½·2·(−¼, ¼) + ½·(−½, ½) = (−½, ½)
    reverse: KL(p_s ‖ p_t) = ½ ln(2/3) + ½ ln 2 = ½ ln(4/3);  L = ½·4·½ ln(4/3) + ½ ln 2 = ln(4/3) + ½ ln 2
             r = log p_s − log p_t = (ln(2/3), ln 2);  Σ p_s r = ½ ln(4/3)
             ∂KL/∂a_0 = p_s0 (r_0 − ½ ln(4/3)) = ½ ln((2/3)·(√3/2)) = −¼ ln 3, ∂KL/∂a_1 = +¼ ln 3 (a = z/T)
             ∂L/∂z_s = ½·4·(1/T)·(−¼ ln 3, ¼ ln 3) + ½·(−½, ½) = (−¼ ln 3 − ¼, ¼ ln 3 + ¼)"""
    y = torch.tensor([0])
    teacher = torch.tensor([[2 * math.log(3), 0.0]], dtype=torch.float64)
    for reverse, value, grad in [
        (False, 1.5 * math.log(1.5), [-0.5, 0.5]),
        (True, math.log(4 / 3) + 0.5 * math.log(2), [-math.log(3) / 4 - 0.25, math.log(3) / 4 + 0.25]),
    ]:
        student = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
        loss = distillation_loss(student, teacher, y, temperature=2.0, alpha=0.5, reverse=reverse)
        loss.backward()
        assert loss.item() == pytest.approx(value, rel=1e-14)
        assert student.grad[0].tolist() == pytest.approx(grad, rel=1e-14)


@pytest.mark.parametrize("reverse", [False, True])
def test_large_temperature_limit_is_logit_matching(reverse):
    """Hinton §2.1: as T → ∞, T²·KL → (1/2V)·Σ_v (d_v − mean d)², d = z_s − z_t, per token, with
    gradient (1/V)(d − mean d) per token; the gap shrinks like 1/T."""
    z_s, z_t, y = _logits(2, (5, 11))
    V, N = 11, 5
    d = (z_s - z_t).detach()
    d = d - d.mean(-1, keepdim=True)
    limit = (d ** 2).sum(-1).mean() / (2 * V)
    limit_grad = d / (V * N)
    gaps = []
    for T in (1e2, 1e3, 1e4):
        loss = distillation_loss(z_s, z_t, y, T, alpha=1.0, reverse=reverse)
        (grad,) = torch.autograd.grad(loss, z_s)
        gaps.append(abs(loss.item() - limit.item()) / limit.item())
        torch.testing.assert_close(grad, limit_grad, rtol=0, atol=50 / T * limit_grad.abs().max().item())
    assert gaps[-1] < 1e-4, gaps
    assert 5 < gaps[1] / gaps[2] < 20, gaps  # O(1/T): ten times closer for ten times the temperature


def _tiny_gpt(seed, n_layer=1, n_embd=16, vocab=13, block=8, dropout=0.0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=2, n_embd=n_embd, dropout=dropout))


def _batch(seed, vocab=13, block=8, batch=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, block), generator=g), torch.randint(0, vocab, (batch, block), generator=g)


def test_alpha_zero_is_plain_cross_entropy_exactly():
    teacher, student = _tiny_gpt(0, n_layer=2, n_embd=32), _tiny_gpt(1)
    x, y = _batch(0)
    ours = distill_loss(teacher, temperature=3.0, alpha=0.0)(student, (x, y))
    plain = student(x, y)[1]  # what the step trains with by default
    assert torch.equal(ours, plain)
    g_ours = torch.autograd.grad(ours, list(student.parameters()))
    g_plain = torch.autograd.grad(student(x, y)[1], list(student.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(g_ours, g_plain))
    # and α > 0 really is something else
    assert not torch.equal(distill_loss(teacher, 3.0, 0.5)(student, (x, y)), plain)


def _sha(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.weights().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_teacher_is_frozen_while_the_student_trains():
    """Through the one step: the student's weights move, the teacher's stay bit for bit, it gets no
    gradients, and it runs in eval mode (its dropout off) even when handed over in train mode."""
    teacher = _tiny_gpt(0, n_layer=2, n_embd=32, dropout=0.5).train()
    student = _tiny_gpt(1)
    before_t, before_s = _sha(teacher), _sha(student)
    loss = distill_loss(teacher, temperature=2.0, alpha=0.5)
    engine = TorchEngine(student, torch.optim.AdamW(student.parameters(), lr=1e-2), kernels=False)
    batches = iter([_batch(k) for k in range(6)])
    losses = fit(engine, lambda: next(batches), 6, lr=1e-2, loss=loss)
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert _sha(student) != before_s
    assert _sha(teacher) == before_t
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    x, y = _batch(0)
    torch.testing.assert_close(loss(student, (x, y)), loss(student, (x, y)), rtol=0, atol=0)  # no dropout noise


def test_distillation_pulls_the_student_toward_the_teacher():
    """With α = 1 the student's soft distribution approaches the teacher's: the loss falls by half."""
    teacher, student = _tiny_gpt(0, n_layer=2, n_embd=32), _tiny_gpt(1)
    loss = distill_loss(teacher, temperature=1.0, alpha=1.0)
    engine = TorchEngine(student, torch.optim.AdamW(student.parameters(), lr=3e-2), kernels=False)
    x, y = _batch(0)
    losses = fit(engine, lambda: (x, y), 40, lr=3e-2, loss=loss, grad_clip=0)
    assert losses[-1] < 0.5 * losses[0], losses


# ---- groundup distill ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("distill") / "teacher"
    train(tiny_config("max_steps=20"), run, progress=False)
    return run


def test_distill_cli_end_to_end(teacher_run, tmp_path):
    student = tmp_path / "student"
    result = run_cli("distill", "--teacher", str(teacher_run), *_sets(STUDENT), "--temperature", "2", "--alpha", "0.5",
                     "--out", str(student))
    assert result.returncode == 0, result.stderr
    for name in (ckpt.CONFIG, ckpt.WEIGHTS, ckpt.STATE, ckpt.TOKENIZER, "metrics.jsonl", "loss.png", distill_cmd.RECIPE):
        assert (student / name).is_file(), name
    recipe = json.loads((student / distill_cmd.RECIPE).read_text())
    teacher_state = json.loads((teacher_run / ckpt.STATE).read_text())
    assert recipe["teacher_weights_sha256"] == teacher_state["files"][ckpt.WEIGHTS] == \
        hashlib.sha256((teacher_run / ckpt.WEIGHTS).read_bytes()).hexdigest()
    assert (recipe["temperature"], recipe["alpha"], recipe["direction"], recipe["sequence_level"]) == (2.0, 0.5, "forward", False)
    config = ckpt.read_run_config(student)
    teacher_config = ckpt.read_run_config(teacher_run)
    assert (config.model.n_layer, config.model.n_embd) == (1, 16)  # its own size
    assert config.model.vocab_size == teacher_config.model.vocab_size and config.data == teacher_config.data
    assert json.loads((student / ckpt.STATE).read_text())["step"] == 8
    sampled = run_cli("sample", "--run", str(student), "--max-new-tokens", "20", "--seed", "1")
    assert sampled.returncode == 0, sampled.stderr
    assert len(sampled.stdout.strip()) > 0


def test_sequence_level_trains_on_the_teachers_samples(teacher_run, tmp_path, monkeypatch):
    seen = {}
    real_train = distill_cmd.train

    def spy(config, run_dir, **kwargs):
        seen.update(kwargs)
        return real_train(config, run_dir, **kwargs)

    monkeypatch.setattr(distill_cmd, "train", spy)
    trained_on = []  # what the trainer's training sampler really draws from

    class Sampler(trainer.BatchSampler):
        def __init__(self, tokens, *args, split="train", **kwargs):
            super().__init__(tokens, *args, split=split, **kwargs)
            if split == "train":
                trained_on.append(tokens)

    monkeypatch.setattr(trainer, "BatchSampler", Sampler)
    config = load_config(None, STUDENT)
    result = distill_cmd.distill_run(teacher_run, config, tmp_path / "seq", sequence_level=True, samples=3,
                                     sample_seed=11, progress=False)
    assert result.step == 8 and math.isfinite(result.val_loss)
    assert seen["loss"] is None  # plain cross-entropy
    model, tokenizer, _ = load_run(teacher_run, "cpu")
    start = prompt_ids(tokenizer, "")
    expected = []
    for i in range(3):  # sample i: the start token and block_size tokens drawn with seed 11 + i
        expected += start + list(generate(model, start, SamplingSettings(max_new_tokens=32, temperature=1.0, seed=11 + i)))
    assert seen["data"].train.tolist() == expected
    assert len(trained_on) == 1 and trained_on[0].tolist() == expected
    np.testing.assert_array_equal(seen["data"].val, distill_cmd.load_data(result.config).val)  # val: the corpus
    recipe = json.loads((tmp_path / "seq" / distill_cmd.RECIPE).read_text())
    assert (recipe["sequence_level"], recipe["samples"], recipe["sample_seed"], recipe["temperature"]) == (True, 3, 11, None)
    stored = np.fromfile(tmp_path / "seq" / distill_cmd.SAMPLES, dtype=recipe["samples_dtype"])
    assert stored.tolist() == expected  # kept with the run, so a resumed run trains on the same samples
    trained_on.clear()
    assert distill_cmd.resume_distill(tmp_path / "seq", {"max_steps": 10}, progress=False).step == 10
    assert len(trained_on) == 1 and trained_on[0].tolist() == expected


def test_reverse_is_recorded_and_changes_training(teacher_run, tmp_path):
    config = load_config(None, [*STUDENT, "max_steps=3", "eval_interval=3", "checkpoint_interval=0"])
    forward = distill_cmd.distill_run(teacher_run, config, tmp_path / "f", progress=False)
    reverse = distill_cmd.distill_run(teacher_run, config, tmp_path / "r", reverse=True, progress=False)
    assert json.loads((tmp_path / "r" / distill_cmd.RECIPE).read_text())["direction"] == "reverse"
    assert forward.val_loss != reverse.val_loss


def _cli_error(capsys, *args):
    return _cli_error_of(capsys, ["distill", *args])


def _cli_error_of(capsys, argv):
    """`groundup ARGV` in this process: exit 2 and exactly one line, `error: …`, on stderr."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (code, err)
    return err


def test_bad_inputs_get_one_clear_line(teacher_run, tmp_path, capsys):
    common = [*_sets(STUDENT)]
    out = str(tmp_path / "s")
    assert "temperature" in _cli_error(capsys, "--teacher", str(teacher_run), *common, "--temperature", "0", "--out", out)
    assert "temperature" in _cli_error(capsys, "--teacher", str(teacher_run), *common, "--temperature", "-1", "--out", out)
    assert "alpha" in _cli_error(capsys, "--teacher", str(teacher_run), *common, "--alpha", "1.5", "--out", out)
    assert "alpha" in _cli_error(capsys, "--teacher", str(teacher_run), *common, "--alpha", "-0.1", "--out", out)
    assert "teacher: run directory" in _cli_error(capsys, "--teacher", str(tmp_path / "nope"), *common, "--out", out)
    err = _cli_error(capsys, "--teacher", str(teacher_run), *common, "--set", "vocab_size=100", "--out", out)
    assert "100" in err and str(ckpt.read_run_config(teacher_run).model.vocab_size) in err
    corpus = tmp_path / "small.txt"
    corpus.write_text("abcabcabc " * 200)
    err = _cli_error(capsys, "--teacher", str(teacher_run), *common, "--set", f"corpus={corpus}", "--out", out)
    assert "tokenizer" in err and "vocab 4" in err and f"vocab {ckpt.read_run_config(teacher_run).model.vocab_size}" in err
    assert "sequence-level" in _cli_error(capsys, "--teacher", str(teacher_run), *common, "--sequence-level",
                                          "--temperature", "2", "--out", out)
    assert "--samples" in _cli_error(capsys, "--teacher", str(teacher_run), *common, "--sequence-level",
                                     "--samples", "0", "--out", out)
    assert "block_size 64 is longer than the teacher's context 32" in _cli_error(
        capsys, "--teacher", str(teacher_run), *common, "--set", "block_size=64", "--out", out)
    assert "torch engine" in _cli_error(capsys, "--teacher", str(teacher_run), *common, "--set", "engine=numpy", "--out", out)
    existing = tmp_path / "exists"
    existing.mkdir()
    assert "already exists" in _cli_error(capsys, "--teacher", str(teacher_run), *common, "--out", str(existing))
    assert not (tmp_path / "s").exists()  # nothing written by any of them


def test_corrupt_teacher_is_refused_by_the_cli(teacher_run, tmp_path):
    """A real process: a teacher whose weights were damaged (every checkpoint) → exit 2, no traceback."""
    broken = tmp_path / "broken"
    shutil.copytree(teacher_run, broken)
    for weights in broken.rglob(ckpt.WEIGHTS):
        weights.unlink()  # (hard links: write a new file, never through the shared inode)
        weights.write_bytes(b"not safetensors")
    result = run_cli("distill", "--teacher", str(broken), *_sets(STUDENT), "--out", str(tmp_path / "s"))
    assert_clean_error(result, "teacher: no usable checkpoint", str(broken))
    assert not (tmp_path / "s").exists()


def test_resume_continues_the_distillation_bit_for_bit(teacher_run, tmp_path, capsys):
    """4 steps, then `groundup distill --resume` to 8, ends with the same weights as 8 steps at once
    (same teacher, same loss, same batches); `groundup train --resume` is refused (it would switch to CE)."""
    settings = [*STUDENT, "lr_decay_steps=8", "checkpoint_interval=4"]
    distill_cmd.distill_run(teacher_run, load_config(None, settings), tmp_path / "once", temperature=3.0, alpha=0.7,
                            reverse=True, progress=False)
    distill_cmd.distill_run(teacher_run, load_config(None, [*settings, "max_steps=4"]), tmp_path / "twice",
                            temperature=3.0, alpha=0.7, reverse=True, progress=False)
    assert "distill --resume" in _cli_error_of(capsys, ["train", "--resume", str(tmp_path / "twice")])
    assert "drop --teacher" in _cli_error_of(capsys, ["distill", "--resume", str(tmp_path / "twice"), "--teacher", str(teacher_run)])
    assert main(["distill", "--resume", str(tmp_path / "twice"), "--set", "max_steps=8"]) == 0
    once, twice = ((tmp_path / name / ckpt.WEIGHTS).read_bytes() for name in ("once", "twice"))
    assert once == twice

    recipe_path = tmp_path / "twice" / distill_cmd.RECIPE
    recipe = json.loads(recipe_path.read_text())
    recipe["teacher_weights_sha256"] = "0" * 64
    recipe_path.write_text(json.dumps(recipe))
    assert "has changed" in _cli_error_of(capsys, ["distill", "--resume", str(tmp_path / "twice"), "--set", "max_steps=9"])


def test_resume_of_a_run_that_is_not_distilled(teacher_run, tmp_path, capsys):
    assert "is not a distilled run" in _cli_error_of(capsys, ["distill", "--resume", str(teacher_run)])
    fake = tmp_path / "fake"
    shutil.copytree(teacher_run, fake)
    (fake / distill_cmd.RECIPE).write_text("[1, 2]")
    assert "distill.json is corrupt" in _cli_error_of(capsys, ["distill", "--resume", str(fake)])
    assert "--teacher runs/T --out runs/S" in _cli_error_of(capsys, ["distill", "--teacher", str(teacher_run)])
