"""Log-parsing workload: Loghub-2k reader, DPP + kNN demonstration selection, InferLog's prompt layout,
template post-processing and the GA / PA / FGA / FTA metrics. Pure Python plus numpy (no torch)."""
from logparse.loghub import LOGHUB_SYSTEMS, LogDataset, list_systems, load_system
from logparse.metrics import evaluate
from logparse.postprocess import extract_template
from logparse.prompt import render_messages, to_icl
from logparse.selection import ParseQuery, build_stream

__all__ = [
    "LOGHUB_SYSTEMS",
    "LogDataset",
    "ParseQuery",
    "build_stream",
    "evaluate",
    "extract_template",
    "list_systems",
    "load_system",
    "render_messages",
    "to_icl",
]
