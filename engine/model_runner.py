"""ScheduledBatch → tensors → forward → sampled token ids. The only place that builds device tensors."""
from __future__ import annotations

import torch

from engine.attention.base import ForwardBatch
from engine.attention.registry import create_backend
from engine.attention.cpu_backend import CpuBackend
from engine.config import ModelConfig, ServerArgs
from engine.cpu_runtime import keep_freed_memory
from engine.memory import KVPool, plan_kv_slots
from engine.kernels.cpu.rmsnorm import DTYPES as RMSNORM_DTYPES
from engine.kernels.cpu.rmsnorm import CpuRMSNorm
from engine.kernels.cpu.rotary import CpuRotary
from engine.models.layers import use_rmsnorm_kernel, use_rotary_kernel
from engine.models.loader import DTYPES, load_model, resolve_dtype
from engine.sampling import SamplingBatch, sample
from engine.scheduler.batch import ScheduledBatch


class ModelRunner:
    def __init__(self, args: ServerArgs, model_path: str):
        self.args = args
        self.device = args.device
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
        if args.device == "cpu":
            keep_freed_memory()
        self.dtype = resolve_dtype(args.dtype, args.device)  # "auto" → what this hardware computes natively
        self.model, self.model_config = load_model(model_path, self.dtype, args.device, progress=True)
        cfg: ModelConfig = self.model_config
        self.context_len = min(args.context_length or cfg.max_position_embeddings, cfg.max_position_embeddings)
        dtype = DTYPES[self.dtype]
        per_token = KVPool.bytes_per_token(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, dtype)
        self.num_slots = plan_kv_slots(args.kv_cache_tokens, args.mem_fraction, per_token, args.page_size,
                                       args.device)
        self.kv_pool = KVPool(self.num_slots, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, dtype, args.device)
        self.max_reqs = args.max_running_requests + 1
        self.req_to_token = torch.zeros((self.max_reqs, self.context_len), dtype=torch.int32, device=args.device)
        self.attn_backend = create_backend(args.attention_backend, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                           args.device)
        if isinstance(self.attn_backend, CpuBackend) and dtype in RMSNORM_DTYPES:  # its compiler builds this too
            use_rmsnorm_kernel(self.model, CpuRMSNorm())
            use_rotary_kernel(self.model, CpuRotary())  # the same dtypes
        self.sm_scale = cfg.head_dim ** -0.5

    def _tensor(self, data: list[int], dtype=torch.int64) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype, device=self.device)

    def build_forward_batch(self, batch: ScheduledBatch) -> tuple[torch.Tensor, ForwardBatch]:
        rows, cols, slots = [], [], []  # one-slot writes (a decode step has one per request): one scatter
        for w in batch.table_writes:
            if len(w.slots) == 1:
                rows.append(w.row)
                cols.append(w.start)
                slots.append(w.slots[0])
            elif w.slots:
                self.req_to_token[w.row, w.start:w.start + len(w.slots)] = self._tensor(w.slots, torch.int32)
        if slots:
            self.req_to_token[self._tensor(rows), self._tensor(cols)] = self._tensor(slots, torch.int32)
        seq_lens = [p + e for p, e in zip(batch.prefix_lens, batch.extend_lens)]
        positions: list[int] = []
        starts, last = [], []
        for p, e in zip(batch.prefix_lens, batch.extend_lens):
            starts.append(len(positions))
            positions.extend(range(p, p + e))
            last.append(len(positions) - 1)
        fb = ForwardBatch(
            mode=batch.mode, batch_size=batch.batch_size,
            req_pool_indices=self._tensor([r.req_pool_idx for r in batch.reqs]),
            seq_lens=self._tensor(seq_lens), prefix_lens=self._tensor(batch.prefix_lens),
            extend_lens=self._tensor(batch.extend_lens), extend_start_loc=self._tensor(starts),
            positions=self._tensor(positions), out_cache_loc=self._tensor(batch.out_cache_loc),
            last_token_index=self._tensor(last), req_to_token=self.req_to_token, kv_pool=self.kv_pool,
            attn_backend=self.attn_backend, sm_scale=self.sm_scale, seq_lens_list=seq_lens,
            prefix_lens_list=list(batch.prefix_lens), extend_lens_list=list(batch.extend_lens),
            num_extend=batch.num_extend,
        )
        return self._tensor(batch.input_ids), fb

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits [B, vocab] (float32) of each request's last new token."""
        batch.check()
        input_ids, fb = self.build_forward_batch(batch)
        self.attn_backend.init_forward(fb)
        return self.model(input_ids, fb.positions, fb)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[int]:
        logits = self.forward(batch)
        sb = SamplingBatch.build([r.sampling for r in batch.reqs], [len(r.output_ids) for r in batch.reqs],
                                 [r.seed for r in batch.reqs], device=self.device)
        return sample(logits, sb).tolist()
