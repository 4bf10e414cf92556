"""AttMAML: a small MLP (knob vector -> loss) meta-learned with MAML, tasks weighted by attention.

Meta-training (for one target task): every outer step, each training task's points are split at random into
a support and a query set; `inner_steps` of SGD on the support loss give task-adapted weights, whose query
loss is the task's meta-loss. The outer loss is the attention-weighted sum of those meta-losses, so the
meta-init suits the tasks that look like the target most:

    alpha = softmax_i(<e(target), e(task_i)> / temperature)

where e() embeds a task-feature vector: z-scored with the training tasks' mean/std, then L2-normalised (the
dot product is a cosine; the temperature is its scale). `second_order` backpropagates through the inner
steps; off, the inner gradients are treated as constants (first-order MAML).

Uncertainty is MC dropout: dropout stays on at prediction, and mean/std are taken over `mc_samples` passes.
Targets are centred per task (y - mean(y)) by the callers, so only the shape of a response surface is shared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Params = list[torch.Tensor]


@dataclass(frozen=True)
class MetaTask:
    """One task's observations: x [n, d] in [0, 1]^d, y [n] (centred), features [f]."""

    x: np.ndarray
    y: np.ndarray
    features: np.ndarray


@dataclass(frozen=True)
class AttMAMLConfig:
    hidden: int = 64
    depth: int = 2  # hidden layers
    dropout: float = 0.1
    inner_lr: float = 0.1
    inner_steps: int = 3
    outer_lr: float = 1e-2
    meta_steps: int = 200
    # Second order costs little at this size, and first-order MAML learned far less on the synthetic family.
    second_order: bool = True
    temperature: float = 0.25
    finetune_steps: int = 5
    mc_samples: int = 32
    seed: int = 0


def init_params(in_dim: int, hidden: int, depth: int, generator: torch.Generator) -> Params:
    """Kaiming-uniform weights, zero biases: [W_0 [h, in], b_0 [h], ..., W_out [1, h], b_out [1]]."""
    sizes = [in_dim] + [hidden] * depth + [1]
    params: Params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = (6.0 / fan_in) ** 0.5 if fan_out != 1 else (1.0 / fan_in) ** 0.5
        params.append((torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound)
        params.append(torch.zeros(fan_out))
    return params


def forward(params: Params, x: torch.Tensor, dropout: float, train: bool,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """x [n, d] -> [n]; inverted dropout after every hidden layer when `train` (MC dropout passes train=True).

    Masks come from `generator`, so seeded runs repeat exactly without touching torch's global RNG."""
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers - 1):
        h = F.relu(h @ params[2 * i].T + params[2 * i + 1])
        if train and dropout > 0:
            keep = torch.rand(h.shape, generator=generator) >= dropout
            h = h * keep / (1.0 - dropout)
    return (h @ params[-2].T + params[-1]).squeeze(-1)


def sgd_steps(params: Params, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, dropout: float,
              create_graph: bool, generator: torch.Generator | None = None) -> Params:
    """`steps` plain SGD steps on the MSE of (x, y), functionally (the input params are not modified)."""
    for _ in range(steps):
        loss = F.mse_loss(forward(params, x, dropout, True, generator), y)
        grads = torch.autograd.grad(loss, params, create_graph=create_graph)
        params = [p - lr * g for p, g in zip(params, grads)]
    return params


def task_attention(target: np.ndarray, tasks: np.ndarray, temperature: float) -> np.ndarray:
    """[n_tasks] softmax weights of the target's feature embedding against each task's (see module doc)."""
    tasks = np.asarray(tasks, dtype=np.float64)  # [n_tasks, f]
    mean, std = tasks.mean(axis=0), tasks.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)

    def embed(v: np.ndarray) -> np.ndarray:
        z = (v - mean) / std
        norm = np.linalg.norm(z, axis=-1, keepdims=True)
        return z / np.where(norm > 1e-12, norm, 1.0)

    logits = embed(tasks) @ embed(np.asarray(target, dtype=np.float64)) / temperature  # [n_tasks]
    logits -= logits.max()
    w = np.exp(logits)
    return w / w.sum()


class AttMAML:
    """Meta-init + per-target adaptation. `meta_train` once per target; `adapt` + `predict` per iteration."""

    def __init__(self, in_dim: int, config: AttMAMLConfig = AttMAMLConfig()):
        self.in_dim, self.cfg = in_dim, config
        self._gen = torch.Generator().manual_seed(config.seed)
        self.params: Params = init_params(in_dim, config.hidden, config.depth, self._gen)
        self.weights: np.ndarray | None = None

    def reseed(self, seed: int) -> None:
        """New dropout masks from here on (the weights stay): repeated runs from one meta-training."""
        self._gen.manual_seed(seed)

    def meta_train(self, tasks: list[MetaTask], target_features: np.ndarray | None = None) -> list[float]:
        """Meta-learn the init on `tasks`; attention towards `target_features` (None: equal weights).

        Returns the outer loss per step. Tasks need at least 2 points (one support, one query)."""
        cfg = self.cfg
        tasks = [t for t in tasks if len(t.y) >= 2]
        if not tasks:
            raise ValueError("tasks: need at least one task with 2 or more points")
        if target_features is None:
            self.weights = np.full(len(tasks), 1.0 / len(tasks))
        else:
            self.weights = task_attention(target_features, np.stack([t.features for t in tasks]), cfg.temperature)
        data = [(torch.tensor(t.x, dtype=torch.float32), torch.tensor(t.y, dtype=torch.float32)) for t in tasks]
        alpha = torch.tensor(self.weights, dtype=torch.float32)
        params = [p.clone().requires_grad_(True) for p in self.params]
        opt = torch.optim.Adam(params, lr=cfg.outer_lr)
        rng = np.random.default_rng(cfg.seed)
        history = []
        for _ in range(cfg.meta_steps):
            opt.zero_grad()
            outer = torch.zeros(())
            for w, (x, y) in zip(alpha, data):
                perm = torch.from_numpy(rng.permutation(len(y)))
                n_support = max(1, len(y) // 2)
                s, q = perm[:n_support], perm[n_support:]
                fast = sgd_steps(params, x[s], y[s], cfg.inner_lr, cfg.inner_steps, cfg.dropout, cfg.second_order,
                                 self._gen)
                if not cfg.second_order:
                    # First-order MAML: the query gradient at the adapted weights is applied to the init.
                    fast = [p + (f - p).detach() for p, f in zip(params, fast)]
                outer = outer + w * F.mse_loss(forward(fast, x[q], cfg.dropout, True, self._gen), y[q])
            outer.backward()
            opt.step()
            history.append(float(outer.detach()))
        self.params = [p.detach() for p in params]
        return history

    def adapt(self, x: np.ndarray, y: np.ndarray, steps: int | None = None, lr: float | None = None) -> Params:
        """Weights fine-tuned from the meta-init on (x [n, d], y [n]); the meta-init is left unchanged."""
        params = [p.clone().requires_grad_(True) for p in self.params]
        if len(y) == 0:
            return [p.detach() for p in params]
        xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
        cfg = self.cfg
        fast = sgd_steps(params, xt, yt, cfg.inner_lr if lr is None else lr,
                         cfg.finetune_steps if steps is None else steps, cfg.dropout, False, self._gen)
        return [p.detach() for p in fast]

    def predict(self, params: Params, x: np.ndarray, mc_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """MC-dropout mean and std, each [n], over `mc_samples` stochastic passes."""
        n_passes = self.cfg.mc_samples if mc_samples is None else mc_samples
        xt = torch.tensor(x, dtype=torch.float32)  # [n, d]
        with torch.no_grad():
            # All passes in one batch: each of the T copies of x draws its own dropout masks.
            out = forward(params, xt.repeat(n_passes, 1), self.cfg.dropout, True, self._gen)  # [T * n]
        preds = out.view(n_passes, len(xt))  # [T, n]
        return preds.mean(0).numpy().astype(np.float64), preds.std(0).numpy().astype(np.float64)
