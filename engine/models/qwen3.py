"""Qwen3 (dense): the Llama decoder with an RMSNorm over each head of q and of k before rotary, and no q/k/v bias.

`ModelConfig.from_dict` sets `qk_norm=True` for model_type qwen3; the norms are `self_attn.q_norm` / `k_norm`
([head_dim] weights, HF's names), so checkpoints load by name like every other tensor.
"""
from __future__ import annotations

from engine.config import ModelConfig
from engine.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: ModelConfig):
        if not cfg.qk_norm:
            raise ValueError("qk_norm: Qwen3 checkpoints carry q/k RMSNorm weights")
        super().__init__(cfg)
