"""One tensor-parallel group: the collectives the sharded model and the step broadcast use.

gloo on CPU, nccl on CUDA (rank r on cuda:r), one process per rank, rank 0 the engine's own process. Every
collective here is called by all ranks in the same order: the model's forward makes the same calls on every
rank, and rank 0 broadcasts each step's metadata before running it (step_meta.py).
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT_S = 120  # a rank that stops answering (not dead: hung) fails the step after this long


class TPGroupDead(BaseException):
    """A tensor-parallel rank died or the group broke. Derived from BaseException on purpose: it is not a
    failed step that the engine could abort and retry (every later step needs all ranks), so nothing between
    the model runner and the process's top level catches it; the process closes the group and exits, and
    the server's watchdog answers 503 and exits (server/launch.py)."""


def rank_device(device: str, rank: int) -> str:
    """Rank r's device: cuda:r for a CUDA engine, the CPU for a CPU one."""
    return f"cuda:{rank}" if torch.device(device).type == "cuda" else "cpu"


class TPContext:
    def __init__(self, rank: int, size: int, init_method: str, device: str):
        self.rank, self.size, self.device = rank, size, rank_device(device, rank)
        backend = "nccl" if self.device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(self.device)
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        self.group = dist.group.WORLD

    # --- the model's collectives ----------------------------------------------------------------------
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of every rank's partial x (row-parallel o / down outputs), in place."""
        dist.all_reduce(x, group=self.group)
        return x

    def embed(self, embedding: torch.nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel lookup: each rank embeds the ids in its slice, zeros elsewhere, then all ranks sum."""
        per_rank = embedding.num_embeddings
        local = input_ids - self.rank * per_rank  # [T]
        outside = (local < 0) | (local >= per_rank)
        x = embedding(local.masked_fill(outside, 0))  # [T, hidden]
        x.masked_fill_(outside.unsqueeze(-1), 0)
        return self.all_reduce(x)

    def gather_vocab(self, logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """[B, V/N] per rank → [B, V] on every rank (the padded tail cut)."""
        parts = [torch.empty_like(logits) for _ in range(self.size)]
        dist.all_gather(parts, logits.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)[:, :vocab_size]

    # --- rank 0 → the others ----------------------------------------------------------------------------
    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        dist.broadcast(t, src=0, group=self.group)
        return t

    def broadcast_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        return int(self.broadcast(t).item())

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
