"""Weight-only post-training quantization: int8 per channel and int4 group-wise, by round-to-nearest
or GPTQ, multiplied by PyTorch's own low-bit CPU kernels; quantized runs that load like any other.

    formats.py  the stored codes, scales and zero points; packing two int4 codes per byte
    gptq.py     GPTQ (Frantar et al. 2022): column-by-column quantization with error compensation
    linear.py   QuantizedLinear: the matmul that reads the codes (groundup's float32 kernels in
                kernels/cpu.c; torch's int8/int4 CPU ops for bfloat16)
    model.py    quantize_model / load_quantized on a GPT; what stays float32 (--quantize-head)
    run.py      `groundup quantize` and load_model, the one loader of (quantized or float) runs

    model = quantize_model(copy.deepcopy(gpt), bits=4, group_size=128, method="gptq",
                           calibration=calibration_batches(tokens, block_size, 128, seed, 8))
    weight_bytes(model)                                  # bytes a checkpoint of it stores
    model, config, state = load_model("runs/X-int4")     # a quantized (or float) run
"""

from groundup.quantize.formats import QuantizedWeight, pack_int4, quantize_int4, quantize_int8, quantize_rtn, unpack_int4
from groundup.quantize.gptq import hessian, quantize_gptq
from groundup.quantize.linear import QuantizedLinear
from groundup.quantize.model import load_quantized, match_quantization, quantize_model, weight_bytes
from groundup.quantize.run import calibration_batches, load_model, quantize_run

__all__ = ["QuantizedWeight", "QuantizedLinear", "calibration_batches", "hessian", "load_model", "load_quantized", "match_quantization",
           "pack_int4", "quantize_gptq", "quantize_int4", "quantize_int8", "quantize_model", "quantize_rtn",
           "quantize_run", "unpack_int4", "weight_bytes"]
