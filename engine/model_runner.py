"""ScheduledBatch → tensors → forward → logit processing → sampled token ids (+ logprobs). The only place that
builds device tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention.base import ForwardBatch
from engine.attention.registry import create_backend
from engine.attention.cpu_backend import CpuBackend
from engine.config import ModelConfig, ServerArgs
from engine.cpu_runtime import keep_freed_memory
from engine.distributed.comm import TPContext, rank_device
from engine.distributed.launcher import TPWorkers
from engine.distributed.sharding import check_tp_size, shard_config
from engine.distributed.step_meta import HEADER_LEN, OP_STOP, StepMeta, stop_header
from engine.memory import KVPool, plan_kv_slots
from engine.kernels.cpu.rmsnorm import DTYPES as RMSNORM_DTYPES
from engine.kernels.cpu.rmsnorm import CpuRMSNorm
from engine.kernels.cpu.rotary import CpuRotary
from engine.kernels.cpu.silu_mul import CpuSiluMul
from engine.kernels.cpu.f32_gemv import CpuF32Gemv
from engine.kernels.cpu.int4_gemv import CpuInt4Gemv, torch_int4pack_layout
from engine.kernels.cpu.int8_gemv import CpuInt8Gemv
from engine.models.layers import use_rmsnorm_kernel, use_rotary_kernel, use_silu_mul_kernel
from engine.models.quant import use_quant_kernel
from engine.models.loader import DTYPES, load_model, model_config, resolve_dtype
from engine.logit_processor import LogitProcessor
from engine.logprobs import LogitRows, StepLogprobs, plan_logit_rows
from engine.sampling import SamplingBatch, sample
from engine.scheduler.batch import RowLogprobs, ScheduledBatch


@dataclass
class StepResult:
    next_ids: list[int]  # one per batch row (rows that do not sample carry an unused id)
    logprobs: list[RowLogprobs | None] | None = None  # per row, for the requests that asked; None if none did


class ModelRunner:
    """Loads the model and its KV pool and runs steps. With tp_size > 1 it is one rank of a tensor-parallel
    group: rank 0 (tp_rank=0, the engine's process) starts the other ranks and broadcasts each step to them
    before running it; a worker rank (engine/distributed/worker.py) runs `serve_one_step` in a loop."""

    def __init__(self, args: ServerArgs, model_path: str, tp_rank: int = 0, tp_init_method: str | None = None,
                 progress: bool = True):
        """`progress`: a tqdm bar over the checkpoint's tensors while loading (shown on a terminal only)."""
        self.args = args
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
        if args.device == "cpu":
            keep_freed_memory()
        self.dtype = resolve_dtype(args.dtype, args.device)  # "auto" → what this hardware computes natively
        self.tp, self.tp_workers = None, None
        if args.tp_size > 1:
            check_tp_size(model_config(model_path), args.tp_size)  # a clear error before any process starts
            if tp_rank == 0:
                self.tp_workers = TPWorkers(args, model_path)
                tp_init_method = self.tp_workers.init_method
            try:
                self.tp = TPContext(tp_rank, args.tp_size, tp_init_method, args.device)
            except BaseException:
                self.close()
                raise
        self.device = rank_device(args.device, tp_rank) if self.tp else args.device
        try:
            self._load(model_path, progress and tp_rank == 0)
        except BaseException:
            self.close()
            raise

    def _load(self, model_path: str, progress: bool) -> None:
        args = self.args
        self.model, self.model_config = load_model(
            model_path, self.dtype, self.device, tp=self.tp, load_format=args.load_format,
            quantization=args.quantization, quant_group_size=args.quant_group_size,
            quantize_lm_head=args.quantize_lm_head, seed=args.seed, progress=progress)
        cfg: ModelConfig = self.model_config
        shard = shard_config(cfg, args.tp_size)  # this rank's heads (the full model when tp_size is 1)
        self.context_len = min(args.context_length or cfg.max_position_embeddings, cfg.max_position_embeddings)
        dtype = DTYPES[self.dtype]
        per_token = KVPool.bytes_per_token(cfg.num_layers, shard.num_kv_heads, shard.head_dim, dtype)
        if self.tp is not None and self.device == "cpu":
            per_token *= args.tp_size  # the ranks' pools share this host's memory
        self.num_slots = plan_kv_slots(args.kv_cache_tokens, args.mem_fraction, per_token, args.page_size,
                                       args.device)
        if self.tp is not None:
            self.num_slots = self.tp.broadcast_int(self.num_slots)  # rank 0's plan: slot ids must mean the same
        self.kv_pool = KVPool(self.num_slots, cfg.num_layers, shard.num_kv_heads, shard.head_dim, dtype, self.device)
        self.max_reqs = args.max_running_requests + 1
        self.req_to_token = torch.zeros((self.max_reqs, self.context_len), dtype=torch.int32, device=self.device)
        self.attn_backend = create_backend(args.attention_backend, shard.num_heads, shard.num_kv_heads,
                                           shard.head_dim, self.device)
        if isinstance(self.attn_backend, CpuBackend) and dtype in RMSNORM_DTYPES:  # its compiler builds this too
            use_rmsnorm_kernel(self.model, CpuRMSNorm())
            use_rotary_kernel(self.model, CpuRotary())  # the same dtypes
            use_silu_mul_kernel(self.model, CpuSiluMul())
            if dtype == torch.float32:  # a tied fp32 LM head streams at the read rate (engine/kernels/cpu/f32_gemv.py)
                self.model.use_lm_head_gemv(CpuF32Gemv())
            if args.quantization == "int8":  # compiled int8 / int4 matmuls for fp32 inputs (engine/models/quant.py)
                use_quant_kernel(self.model, "int8", CpuInt8Gemv())
            elif args.quantization == "int4" and torch_int4pack_layout() is not None:
                use_quant_kernel(self.model, "int4", CpuInt4Gemv())
        self.sm_scale = cfg.head_dim ** -0.5
        self.logit_processor = LogitProcessor(self.max_reqs, cfg.vocab_size, self.device)

    def _tensor(self, data: list[int], dtype=torch.int64) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype, device=self.device)

    def build_forward_batch(self, batch: ScheduledBatch | StepMeta) -> tuple[torch.Tensor, ForwardBatch]:
        """Tensors for one step. Also plans `self.logit_rows` (engine.logprobs.LogitRows): which token rows get
        logits; `fb.logits_index` is set when prompt logprobs need more than the last tokens (never under TP, whose
        worker ranks see only the step's StepMeta: requests there cannot ask for prompt logprobs)."""
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
        if isinstance(batch, ScheduledBatch):
            self.logit_rows = plan_logit_rows(batch, starts, last)
        else:
            self.logit_rows = LogitRows(None, list(range(batch.batch_size)), [None] * batch.batch_size)
        logits_index = None if self.logit_rows.index is None else self._tensor(self.logit_rows.index)
        fb = ForwardBatch(
            mode=batch.mode, batch_size=batch.batch_size,
            req_pool_indices=self._tensor(batch.req_pool_indices),
            seq_lens=self._tensor(seq_lens), prefix_lens=self._tensor(batch.prefix_lens),
            extend_lens=self._tensor(batch.extend_lens), extend_start_loc=self._tensor(starts),
            positions=self._tensor(positions), out_cache_loc=self._tensor(batch.out_cache_loc),
            last_token_index=self._tensor(last), req_to_token=self.req_to_token, kv_pool=self.kv_pool,
            attn_backend=self.attn_backend, sm_scale=self.sm_scale, seq_lens_list=seq_lens,
            prefix_lens_list=list(batch.prefix_lens), extend_lens_list=list(batch.extend_lens),
            num_extend=batch.num_extend, logits_index=logits_index,
        )
        return self._tensor(batch.input_ids), fb

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits (float32) of the rows `self.logit_rows` names: [B, vocab], one per request's last new token,
        unless a request asked for prompt logprobs. Under TP, rank 0 first sends the step to the other ranks; a
        dead rank raises TPGroupDead (no step can run without it)."""
        batch.check()
        if self.tp is None:
            return self._forward(batch)
        self.tp_workers.check_alive()
        meta = StepMeta.from_batch(batch)
        try:
            header, body = meta.encode()
            self.tp.broadcast(header.to(self.tp.device))
            self.tp.broadcast(body.to(self.tp.device))
            return self._forward(batch)
        except Exception as e:
            self.tp_workers.check_alive(wait_s=2.0)  # a collective fails when a peer dies: say which one
            raise e

    def _forward(self, batch: ScheduledBatch | StepMeta) -> torch.Tensor:
        input_ids, fb = self.build_forward_batch(batch)
        self.attn_backend.init_forward(fb)
        return self.model(input_ids, fb.positions, fb)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepResult:
        """Forward, logprobs (raw logits), logit processing (bias, min tokens, penalties, grammar), sampling."""
        all_logits = self.forward(batch)
        rows = self.logit_rows
        step_lp = StepLogprobs(batch, rows, all_logits) if any(r.logprob is not None for r in batch.reqs) else None
        logits = all_logits if rows.index is None else all_logits[self._tensor(rows.last)]  # [B, V]
        self.logit_processor.apply(logits, batch.reqs, batch.sample)
        sb = SamplingBatch.build([r.sampling for r in batch.reqs], [len(r.output_ids) for r in batch.reqs],
                                 [r.seed for r in batch.reqs], device=self.device)
        next_ids = sample(logits, sb).tolist()
        for req, do_sample, tok in zip(batch.reqs, batch.sample, next_ids):
            if do_sample and req.grammar is not None:
                req.grammar.accept(tok)
        return StepResult(next_ids, step_lp.finish(next_ids) if step_lp is not None else None)

    @torch.inference_mode()
    def serve_one_step(self) -> bool:
        """Worker ranks: receive one step from rank 0 and run its forward; False when rank 0 says stop."""
        header = self.tp.broadcast(torch.empty(HEADER_LEN, dtype=torch.int64, device=self.tp.device)).tolist()
        if header[0] == OP_STOP:
            return False
        body = torch.empty(StepMeta.body_len(header), dtype=torch.int64, device=self.tp.device)
        self._forward(StepMeta.decode(header, self.tp.broadcast(body).tolist()))
        return True

    def close(self) -> None:
        """Stop and reap the other TP ranks (rank 0) and leave the group. Idempotent; nothing to do at TP 1."""
        if self.tp is not None and self.tp_workers is not None and not self.tp_workers.dead():
            try:
                self.tp.broadcast(stop_header().to(self.tp.device))
            except Exception:  # the group is already broken: the workers exit on their own or are killed
                pass
        if self.tp_workers is not None:
            self.tp_workers.stop()
            self.tp_workers = None
        if self.tp is not None:
            self.tp.close()
            self.tp = None
