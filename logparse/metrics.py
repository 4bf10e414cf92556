"""Log-parsing accuracy metrics as loghub-2.0's evaluator defines them (GA, PA, FGA, FTA).

Both template lists are first whitespace-normalised (strip, collapse runs to one space). A log's predicted
group is the set of logs with the same predicted template string; its true group likewise by ground truth.
A predicted group is *correct* when all its logs share one ground-truth template and it holds every log of
that template, i.e. it equals a ground-truth group.

  GA  = logs in correct groups / all logs
  PA  = logs whose predicted template equals the ground truth / all logs
  FGA = F1 of PGA = correct groups / predicted groups and RGA = correct groups / ground-truth groups
  FTA = F1 of PTA = correct templates / predicted groups and RTA = correct templates / ground-truth groups,
        where a correct template is a correct group whose predicted string equals its ground-truth template
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Sequence


def normalize_whitespace(template: str) -> str:
    return " ".join(template.split())


@dataclass(frozen=True)
class GroupCounts:
    """Counts behind GA / FGA / FTA (all from one pass over the predicted groups)."""

    n_logs: int
    n_pred_groups: int
    n_true_groups: int
    correct_groups: int
    logs_in_correct_groups: int
    correct_templates: int


def _f1(precision: float, recall: float) -> float:
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def group_counts(pred_templates: Sequence[str], true_templates: Sequence[str]) -> GroupCounts:
    """Group logs by (normalised) template and count correct groups and templates."""
    if len(pred_templates) != len(true_templates):
        raise ValueError(
            f"pred_templates has {len(pred_templates)} entries, true_templates has {len(true_templates)}"
        )
    if not true_templates:
        raise ValueError("true_templates is empty")
    preds = [normalize_whitespace(t) for t in pred_templates]
    trues = [normalize_whitespace(t) for t in true_templates]
    true_sizes = Counter(trues)
    truths_by_pred: dict[str, Counter[str]] = defaultdict(Counter)
    for pred, true in zip(preds, trues):
        truths_by_pred[pred][true] += 1
    correct_groups = logs_in_correct = correct_templates = 0
    for pred, truths in truths_by_pred.items():
        if len(truths) != 1:
            continue  # the group mixes ground-truth templates
        (true, size), = truths.items()
        if size != true_sizes[true]:
            continue  # the ground-truth group is split across predictions
        correct_groups += 1
        logs_in_correct += size
        if pred == true:
            correct_templates += 1
    return GroupCounts(
        n_logs=len(trues),
        n_pred_groups=len(truths_by_pred),
        n_true_groups=len(true_sizes),
        correct_groups=correct_groups,
        logs_in_correct_groups=logs_in_correct,
        correct_templates=correct_templates,
    )


def parsing_accuracy(pred_templates: Sequence[str], true_templates: Sequence[str]) -> float:
    if len(pred_templates) != len(true_templates):
        raise ValueError(
            f"pred_templates has {len(pred_templates)} entries, true_templates has {len(true_templates)}"
        )
    if not true_templates:
        raise ValueError("true_templates is empty")
    hits = sum(
        normalize_whitespace(p) == normalize_whitespace(t) for p, t in zip(pred_templates, true_templates)
    )
    return hits / len(true_templates)


def evaluate(pred_templates: Sequence[str], true_templates: Sequence[str]) -> dict[str, float]:
    """{"GA", "PA", "FGA", "FTA"} in [0, 1] for parallel lists of predicted and ground-truth templates."""
    counts = group_counts(pred_templates, true_templates)
    pga = counts.correct_groups / counts.n_pred_groups
    rga = counts.correct_groups / counts.n_true_groups
    pta = counts.correct_templates / counts.n_pred_groups
    rta = counts.correct_templates / counts.n_true_groups
    return {
        "GA": counts.logs_in_correct_groups / counts.n_logs,
        "PA": parsing_accuracy(pred_templates, true_templates),
        "FGA": _f1(pga, rga),
        "FTA": _f1(pta, rta),
    }
