"""The PyTorch engine: `groundup.model` as the equations read, plus what is applied to it from
outside — `kernels.use_kernels` swaps in the fused CPU kernels."""
