"""Continuous-batching scheduler over ids and lengths (pure Python, no torch)."""
from engine.scheduler.batch import ScheduledBatch, StepOutput, TableWrite
from engine.scheduler.request import FinishKind, FinishReason, Req, ReqStatus, Segments
from engine.scheduler.scheduler import Scheduler

__all__ = ["ScheduledBatch", "StepOutput", "TableWrite", "FinishKind", "FinishReason", "Req",
           "ReqStatus", "Segments", "Scheduler"]
