"""Llama-family decoder (Llama 2/3, SmolLM2, Mistral; Qwen2 differs only by qkv bias, Qwen3 only by per-head q/k
RMSNorm: see qwen2.py, qwen3.py).

Forward contract: `forward(input_ids [T], positions [T], fb) -> logits [B, vocab] float32`, where the T tokens
are the new tokens of B requests concatenated and the logits are those of each request's last new token
(`fb.last_token_index`), or of the N rows `fb.logits_index` when the runner sets it. Attention and the KV pool
are reached only through `fb.attn_backend`.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.layers import BucketedLinear, GatedMLP, RMSNorm, RotaryEmbedding


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, rotary: RotaryEmbedding):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = BucketedLinear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = BucketedLinear(self.q_size, cfg.hidden_size, bias=False)
        self.rotary = rotary
        if cfg.qk_norm:  # Qwen3: one [head_dim] weight shared by all heads of q (of k), applied before rotary
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, fb) -> torch.Tensor:
        T = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(T, self.num_heads, self.head_dim)
        k = k.view(T, self.num_kv_heads, self.head_dim)
        v = v.view(T, self.num_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):  # rows of [T * heads, head_dim]: the norm kernels' 2-D contract
            q = self.q_norm(q.reshape(-1, self.head_dim)).view(T, self.num_heads, self.head_dim)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view(T, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(positions, q, k)
        o = fb.attn_backend.forward(q, k, v, self.layer_id, fb)  # [T, H * D]
        return self.o_proj(o)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, rotary: RotaryEmbedding):
        super().__init__()
        self.self_attn = Attention(cfg, layer_id, rotary)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.tp = None  # tensor parallelism (set_tensor_parallel): o_proj and down_proj are row-parallel

    def forward(self, positions, x, residual, fb):
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, fb)
        if self.tp is not None:
            x = self.tp.all_reduce(x)  # each rank's o_proj saw only its heads: sum the partial outputs
        x, residual = self.post_attention_layernorm(x, residual)
        x = self.mlp(x)
        if self.tp is not None:
            x = self.tp.all_reduce(x)  # each rank's down_proj saw only its intermediate slice
        return x, residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, rotary) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = BucketedLinear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.tp, self.full_vocab_size = None, cfg.vocab_size

    def set_tensor_parallel(self, tp, vocab_size: int) -> None:
        """Make this (sharded, engine/distributed/sharding.py) model one rank of `tp`: the embedding and
        lm_head hold a vocab slice, the decoder layers all-reduce their row-parallel outputs."""
        self.tp, self.full_vocab_size = tp, vocab_size
        for layer in self.layers:
            layer.tp = tp

    def use_lm_head_gemv(self, kernel) -> bool:
        """Compute the LM head's decode-sized products (up to `kernel.max_rows` rows) with `kernel` (the contract of
        engine/kernels/cpu/f32_gemv.py), reading the embedding table the head is tied to; returns whether the head
        took it. Only a tied dense fp32 CPU head does: its plain weight stays resident for the lookup anyway, where
        an untied head holds just its packed copy (a plain one beside it would add the head's size again)."""
        head, table = self.lm_head, self.embed_tokens.weight
        if not (self.cfg.tie_word_embeddings and isinstance(head, BucketedLinear) and table.dtype == torch.float32
                and table.device.type == "cpu" and table.shape == (head.out_features, head.in_features)):
            return False
        head.use_gemv(kernel, table)
        return True

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fb) -> torch.Tensor:
        if self.tp is None:
            x = self.embed_tokens(input_ids)  # [T, hidden]
        else:
            x = self.tp.embed(self.embed_tokens, input_ids)  # vocab-parallel: [T, hidden] on every rank
        residual = None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, fb)
        # Only each request's last token needs logits (more only for prompt logprobs): norm and project just those.
        idx = fb.last_token_index if fb.logits_index is None else fb.logits_index
        x = self.norm(x[idx], residual[idx])[0]  # [B or N, hidden]
        logits = self.lm_head(x).float()  # [B or N, vocab] ([B or N, vocab / tp_size] per rank under TP)
        return logits if self.tp is None else self.tp.gather_vocab(logits, self.full_vocab_size)

    def _fused_shards(self) -> dict[str, tuple[str, int, int]]:
        """HF projection name -> (fused parameter name, row offset, rows): q/k/v live in qkv_proj, gate/up in
        gate_up_proj."""
        cfg = self.cfg
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        return {
            "q_proj": ("qkv_proj", 0, q), "k_proj": ("qkv_proj", q, kv), "v_proj": ("qkv_proj", q + kv, kv),
            "gate_proj": ("gate_up_proj", 0, cfg.intermediate_size),
            "up_proj": ("gate_up_proj", cfg.intermediate_size, cfg.intermediate_size),
        }

    def checkpoint_tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(HF tensor name, shape) of every tensor a checkpoint of this model holds, in module order (embeddings,
        layer by layer, final norm, lm_head): what `load_weights` expects, and what dummy weights generate."""
        by_fused: dict[str, list[tuple[str, int]]] = {}
        for short, (fused, _, size) in self._fused_shards().items():
            by_fused.setdefault(fused, []).append((short, size))
        out: list[tuple[str, tuple[int, ...]]] = []
        for name, param in self.named_parameters(remove_duplicate=True):
            if name == "lm_head.weight" and self.cfg.tie_word_embeddings:
                continue
            prefix = "" if name.startswith("lm_head.") else "model."
            parts = name.split(".")
            fused = next((p for p in parts if p in by_fused), None)
            if fused is None:
                out.append((prefix + name, tuple(param.shape)))
                continue
            for short, size in by_fused[fused]:
                out.append((prefix + name.replace(fused, short), (size, *param.shape[1:])))
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, fusing q/k/v and gate/up. Raises ValueError on missing or unknown names.

        Parameters are looked up per tensor, not held: a streaming caller (engine/models/quant_load.py) may
        materialise a layer's parameters just before its tensors arrive and replace them just after."""
        names = {name for name, _ in self.named_parameters()}
        loaded: set[str] = set()
        cfg = self.cfg
        shards = self._fused_shards()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb.inv_freq" in name:
                continue
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            parts = name.split(".")
            target, offset, size = name, None, None
            for short, (fused, off, sz) in shards.items():
                if short in parts:
                    target, offset, size = name.replace(short, fused), off, sz
                    break
            if target not in names:
                raise ValueError(f"checkpoint tensor {name!r} has no place in the {cfg.architecture} model")
            param = self.get_parameter(target)
            dst = param.data if offset is None else param.data.narrow(0, offset, size)
            if dst.shape != tensor.shape:
                raise ValueError(f"checkpoint tensor {name!r}: shape {tuple(tensor.shape)} != {tuple(dst.shape)}")
            dst.copy_(tensor)
            loaded.add(name if offset is None else f"{target}:{offset}")
        # q/k/v arrive as 3 shards of one fused param (weight, and bias if any), gate/up as 2.
        expected = len(names) + (3 + 2 * cfg.attention_bias) * cfg.num_layers
        if len(loaded) != expected:
            raise ValueError(f"checkpoint is missing tensors: loaded {len(loaded)} of {expected}")
