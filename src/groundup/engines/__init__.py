"""Engines that train the same GPT: `groundup.model` (PyTorch, autograd), with the fused CPU kernels
swapped in by `groundup.engines.torch.kernels.use_kernels`, is the fast path; `groundup.engines.numpy`
is the transparent one, with every gradient written out by hand."""
