"""Kernels, one tree by device; each kernel module holds its input-checking wrapper and a torch reference
(or names the reference it shares), and its test mirrors it under tests/kernels/<device>/.

    checks.py   input checks every wrapper shares (ValueError naming the argument)
    cpu/        C kernels compiled on first use for the host CPU (build.py): paged decode / extend attention
                with the shared-prefix cascade (decode_attention.py), RMSNorm (rmsnorm.py), rotary (rotary.py);
                sources in cpu/csrc/
    gpu/        Triton kernels: extend / split-KV decode attention, RMSNorm, rotary (run on CUDA, or on CPU
                tensors under TRITON_INTERPRET=1)

This module imports nothing: importing `engine.kernels.cpu` never pulls in Triton, and vice versa.
"""
