"""The CUDA path: same math as the CPU, bf16 autocast and torch.compile train. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from groundup.config import ModelConfig
from groundup.model import GPT
from groundup.train.trainer import train

from helpers import tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_cuda_forward_matches_cpu(attention):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=100, block_size=64, n_layer=2, n_head=4, n_embd=64, attention=attention))
    x = torch.randint(0, 100, (4, 64))
    cpu_logits = model(x)[0]
    gpu_logits = model.cuda()(x.cuda())[0].cpu()
    torch.testing.assert_close(gpu_logits, cpu_logits, rtol=1e-3, atol=1e-3)  # TF32 may be on


def test_bf16_autocast_training_learns_on_cuda(tmp_path):
    result = train(tiny_config("max_steps=60", "device=cuda", "learning_rate=3e-3"), tmp_path / "r", progress=False)
    assert result.model.token_embedding.weight.device.type == "cuda"
    assert result.model.token_embedding.weight.dtype == torch.float32  # weights stay fp32 under autocast
    assert result.val_loss < 3.5


def test_compiled_training_matches_eager_closely(tmp_path):
    eager = train(tiny_config("max_steps=10", "device=cuda", "dtype=float32"), tmp_path / "e", progress=False)
    compiled = train(tiny_config("max_steps=10", "device=cuda", "dtype=float32", "compile=true"), tmp_path / "c",
                     progress=False)
    assert abs(eager.val_loss - compiled.val_loss) < 1e-3
