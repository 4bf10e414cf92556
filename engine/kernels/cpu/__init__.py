"""CPU kernels in C, compiled once per CPU and source hash by build.py with the system compiler (`$CC`, else cc).

decode_attention.py: paged decode and extend attention over the KV pool, with the cascade over shared cached
prefixes (AMX tiles or AVX512_BF16 vectors; AVX-512 and AVX2 + FMA decode paths); rmsnorm.py; rotary.py;
int8_gemv.py and int4_gemv.py: weight-only int8 / int4 GEMVs and dequantization for fp32 activations
(engine/models/quant.py).
Sources and headers live in csrc/ and ship as package data.
"""
