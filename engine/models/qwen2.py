"""Qwen2 / Qwen2.5: the Llama decoder with biases on the q/k/v projections.

`ModelConfig.from_dict` sets `attention_bias=True` for model_type qwen2; RoPE theta and tied/untied embeddings
come from config.json like every other field, so no layer differs from llama.py.
"""
from __future__ import annotations

from engine.config import ModelConfig
from engine.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: ModelConfig):
        if not cfg.attention_bias:
            raise ValueError("attention_bias: Qwen2 checkpoints carry q/k/v biases")
        super().__init__(cfg)
