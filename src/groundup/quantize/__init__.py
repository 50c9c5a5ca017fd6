"""Weight-only post-training quantization: int8 per channel and int4 group-wise, by round-to-nearest
or GPTQ, multiplied by PyTorch's own low-bit CPU kernels; quantized runs that load like any other.

    formats.py  the stored codes, scales and zero points; packing two int4 codes per byte
    gptq.py     GPTQ (Frantar et al. 2022): column-by-column quantization with error compensation
    linear.py   QuantizedLinear: the matmul that reads the codes (torch's int8/int4 CPU kernels)
    model.py    quantize_model / load_quantized on a GPT; what stays float32
    run.py      `groundup quantize` and load_model, the one loader of (quantized or float) runs
"""

from groundup.quantize.formats import QuantizedWeight, pack_int4, quantize_int4, quantize_int8, quantize_rtn, unpack_int4
from groundup.quantize.gptq import hessian, quantize_gptq
from groundup.quantize.linear import QuantizedLinear
from groundup.quantize.model import load_quantized, match_quantization, quantize_model, weight_bytes
from groundup.quantize.run import load_model, quantize_run

__all__ = ["QuantizedWeight", "QuantizedLinear", "hessian", "load_model", "load_quantized", "match_quantization",
           "pack_int4", "quantize_gptq", "quantize_int4", "quantize_int8", "quantize_model", "quantize_rtn",
           "quantize_run", "unpack_int4", "weight_bytes"]
