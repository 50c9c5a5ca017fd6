"""Accelerator specifications, in one place: MFU in the trainer and the cost calculator read them.

Peak figures are dense (no sparsity) tensor-core throughput from NVIDIA's datasheets:
  A100 SXM 80GB  — NVIDIA A100 Tensor Core GPU datasheet (2021): 312 TFLOP/s BF16, 2,039 GB/s, 400 W
  H100 SXM 80GB  — NVIDIA H100 Tensor Core GPU datasheet (2023): 989 TFLOP/s BF16, 3.35 TB/s, 700 W
  H200 SXM 141GB — NVIDIA H200 Tensor Core GPU datasheet (2024): 989 TFLOP/s BF16, 4.8 TB/s, 700 W
(The datasheets print 1,979 TFLOP/s for H100/H200 "with sparsity"; dense is half.)

The rest of the node draws power too: CPUs, memory, NICs and switches, fans, storage. `host_watts` is
that overhead per GPU, the NVIDIA DGX system's maximum power divided by its 8 GPUs, less the board:
  DGX A100  6.5 kW max  (NVIDIA DGX A100 datasheet, 2020):  6,500 / 8 − 400 = 412.5 W per GPU
  DGX H100 ≈10.2 kW max (NVIDIA DGX H100 datasheet, 2023): 10,200 / 8 − 700 = 575 W per GPU
  DGX H200 ≈10.2 kW max (NVIDIA DGX H200 datasheet, 2024): 10,200 / 8 − 700 = 575 W per GPU
These are maximum ratings: a node training flat out draws somewhat less, so energy estimated
from them leans high (the data centre's cooling and conversion losses come on top, as PUE).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: float  # dense BF16 FLOP/s
    memory_bytes: float
    bandwidth: float  # bytes/s
    watts: float  # board power (TDP)
    source: str
    host_watts: float = 0.0  # the rest of the node per GPU: DGX system power / 8 − board power


def host_watts_per_gpu(node_watts: float, gpus_per_node: int, board_watts: float) -> float:
    """A node's power beyond its GPU boards, per GPU: node watts / GPUs − board watts."""
    return node_watts / gpus_per_node - board_watts


GB = 1e9
PRESETS: dict[str, Hardware] = {
    "A100": Hardware("NVIDIA A100 SXM 80GB", 312e12, 80 * GB, 2039 * GB, 400,
                     "NVIDIA A100 datasheet (2021); host: DGX A100 datasheet, 6.5 kW for 8 GPUs",
                     host_watts_per_gpu(6500, 8, 400)),
    "H100": Hardware("NVIDIA H100 SXM 80GB", 989e12, 80 * GB, 3350 * GB, 700,
                     "NVIDIA H100 datasheet (2023); host: DGX H100 datasheet, ≈10.2 kW for 8 GPUs",
                     host_watts_per_gpu(10200, 8, 700)),
    "H200": Hardware("NVIDIA H200 SXM 141GB", 989e12, 141 * GB, 4800 * GB, 700,
                     "NVIDIA H200 datasheet (2024); host: DGX H200 datasheet, ≈10.2 kW for 8 GPUs",
                     host_watts_per_gpu(10200, 8, 700)),
}


def preset_for_device_name(device_name: str) -> Hardware | None:
    """Match a CUDA device name such as 'NVIDIA H100 80GB HBM3' to a preset."""
    upper = device_name.upper()
    for key in ("H200", "H100", "A100"):
        if key in upper:
            return PRESETS[key]
    return None


def peak_flops(device) -> float | None:
    """Peak dense BF16 FLOP/s of a torch device, when we know it (None on CPU and unknown GPUs)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    hw = preset_for_device_name(torch.cuda.get_device_name(device))
    return hw.peak_flops if hw else None
