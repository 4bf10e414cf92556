"""Configuration: one frozen `ServerArgs` built at the edge (CLI or `Engine(**flags)`) and passed down.

Building a `ServerArgs` does no I/O; `validate()` checks values only. `ModelConfig.from_hf(path)` is the one
place that reads a checkpoint's config.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from engine.kv_events.config import KVEventsConfig, parse_kv_events_config
from engine.radix_cache.eviction import eviction_policy_names

SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight")
EVICTION_POLICIES = ("lru", "lfu", "segment")  # the built-ins; more via register_eviction_policy
ATTENTION_BACKENDS = ("auto", "cpu", "torch", "triton", "flashinfer")
DTYPES = ("auto", "bfloat16", "float32", "float16")  # auto: engine.models.loader.resolve_dtype
PAIR_POLICIES = ("none", "table", "native")
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # config.json model_type values engine/models serves
GGUF_SUFFIX = ".gguf"  # a model_path naming such a file is loaded directly from it (engine/models/gguf_file.py)
QUANTIZATIONS = ("int8", "int4")  # weight-only, CPU kernels (engine/models/quant.py); None: none
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's CPU int4 kernel takes
LOAD_FORMATS = ("auto", "safetensors", "dummy")  # auto: the checkpoint's weights; dummy: seeded random weights
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")  # what both logging and uvicorn accept


@dataclass(frozen=True)
class ServerArgs:
    """Every engine and server flag. CLI flags are these names with '-' for '_'."""

    model_path: str = "demo"
    # Names /v1/models lists and requests may use; the first is reported in responses. None: the model dir's name.
    # A str is taken as one name; the CLI takes several (`--served-model-name a b`).
    served_model_name: tuple[str, ...] | None = None
    chat_template: str | None = None  # path of a Jinja chat template file replacing the tokenizer's own
    trust_remote_code: bool = False  # accepted for SGLang's launch lines; no model code is ever executed
    dtype: str = "auto"  # bfloat16 where the hardware computes it natively, else float32
    device: str = "cpu"
    seed: int = 0  # also seeds --load-format dummy weights
    # weights: SGLang's flag names
    load_format: str = "auto"  # SGLang's --load-format: auto / safetensors (the checkpoint's), dummy (seeded random)
    quantization: str | None = None  # int8 (per output channel) / int4 (group-wise, asymmetric), weight-only
    quant_group_size: int = 128  # int4: input columns per scale and zero point
    quantize_lm_head: bool = False  # also quantize the LM head (embeddings always stay in --dtype)
    # memory
    page_size: int = 1
    kv_cache_tokens: int | None = None  # None: size the pool by mem_fraction
    mem_fraction: float = 0.25  # of free host (or device) memory for the KV pool
    context_length: int | None = None  # None: the model's max_position_embeddings
    # scheduling
    max_running_requests: int = 64
    max_prefill_tokens: int = 4096
    chunked_prefill_size: int = 2048  # <= 0 disables chunking
    enable_mixed_chunk: bool = True  # running requests decode inside prefill steps (off: they wait those steps out)
    schedule_policy: str = "lpm"
    schedule_conservativeness: float = 1.0
    lpm_aging_seconds: float = 2.0  # LPM: each waiting second is worth this many fractions of a full hit
    enable_priority_scheduling: bool = False  # requests' `priority` (higher first) orders admission
    priority_aging_seconds: float = 5.0  # a waiting request gains one priority level per this many seconds
    # cache
    disable_radix_cache: bool = False
    radix_eviction_policy: str = "lru"
    pair_policy: str = "none"  # default refine policy for icl requests that do not say
    pair_table_capacity: int = 200
    pair_keep_last: bool = False  # native PAIR keeps the request's last (most similar) example last
    isolate_prefix_cache: bool = False  # tenants never share radix prefixes (closes the cache-timing side channel)
    # kernels
    attention_backend: str = "auto"
    num_threads: int | None = None  # torch intra-op threads on CPU; None keeps torch's default
    # tracing: record finished requests as a prefix-cache trace (hashes only; engine/trace_recorder.py)
    trace_file: str | None = None
    trace_block_size: int = 16  # prompt tokens per recorded block hash
    # KV events in vLLM's format over ZMQ, one block per radix page (JSON of vLLM's KVEventsConfig keys;
    # engine/kv_events/config.py)
    kv_events_config: str | None = None
    # server
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None  # one tenant ("default"); see server/auth.py
    api_key_file: str | None = None  # lines "KEY TENANT": one key per tenant (read by the server at startup)
    admin_api_key: str | None = None  # the only key for admin routes (/flush_cache, /update_config) when set
    metrics_public: bool = False  # /health and /metrics answer without a key even when keys are set
    shutdown_drain_seconds: float = 30.0  # on SIGTERM, in-flight requests get this long to finish (new ones: 503)
    log_level: str = "info"
    log_requests: bool = False  # log each request's id, lengths and timings when it finishes
    enable_metrics: bool = True  # GET /metrics (Prometheus); --no-enable-metrics turns the route off
    tp_size: int = 1  # tensor-parallel ranks, one process each (engine/distributed/); checked against the model at load
    dp_size: int = 1  # data parallelism: run one server per replica behind sglang-router instead
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # One name or a list of names (msgpack and JSON carry tuples as lists): always a tuple afterwards.
        names = self.served_model_name
        if isinstance(names, str):
            object.__setattr__(self, "served_model_name", (names,))
        elif isinstance(names, list):
            object.__setattr__(self, "served_model_name", tuple(names))

    def validate(self) -> "ServerArgs":
        """Raise ValueError naming the first bad field; return self so it chains."""
        def bad(name: str, why: str) -> None:
            raise ValueError(f"{name}: {why} (got {getattr(self, name)!r})")

        if self.dtype not in DTYPES:
            bad("dtype", f"must be one of {DTYPES}")
        if self.load_format not in LOAD_FORMATS:
            bad("load_format", f"must be one of {LOAD_FORMATS}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            bad("quantization", f"must be one of {QUANTIZATIONS} or None")
        if self.quantization is not None and self.device != "cpu":
            bad("quantization", f"has CPU kernels only; device {self.device!r} has none here")
        if type(self.quant_group_size) is not int or self.quant_group_size not in INT4_GROUP_SIZES:
            bad("quant_group_size", f"must be one of {INT4_GROUP_SIZES}")
        if self.quantize_lm_head and self.quantization is None:
            bad("quantize_lm_head", "needs --quantization int8 or int4")
        if self.page_size < 1:
            bad("page_size", "must be >= 1")
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < self.page_size:
            bad("kv_cache_tokens", "must hold at least one page")
        if not 0.0 < self.mem_fraction <= 0.95:
            bad("mem_fraction", "must be in (0, 0.95]")
        if self.max_running_requests < 1:
            bad("max_running_requests", "must be >= 1")
        if self.max_prefill_tokens < 1:
            bad("max_prefill_tokens", "must be >= 1")
        if self.schedule_policy not in SCHEDULE_POLICIES:
            bad("schedule_policy", f"must be one of {SCHEDULE_POLICIES}")
        if not 0.0 < self.schedule_conservativeness <= 10.0:
            bad("schedule_conservativeness", "must be in (0, 10]")
        if not self.priority_aging_seconds > 0:
            bad("priority_aging_seconds", "must be > 0")
        if self.radix_eviction_policy not in eviction_policy_names():  # built-ins + register_eviction_policy
            bad("radix_eviction_policy", f"must be a registered eviction policy {eviction_policy_names()}")
        if self.pair_policy not in PAIR_POLICIES:
            bad("pair_policy", f"must be one of {PAIR_POLICIES}")
        if self.pair_table_capacity < 1:
            bad("pair_table_capacity", "must be >= 1")
        if self.attention_backend not in ATTENTION_BACKENDS:
            bad("attention_backend", f"must be one of {ATTENTION_BACKENDS}")
        if self.trace_file is not None and (not isinstance(self.trace_file, str) or not self.trace_file):
            bad("trace_file", "must be a non-empty path or None")
        if type(self.trace_block_size) is not int or self.trace_block_size < 1:
            bad("trace_block_size", "must be an integer >= 1")
        for name in ("api_key", "admin_api_key"):
            key = getattr(self, name)
            if key is not None and (not isinstance(key, str) or not key.strip()):
                raise ValueError(f"{name}: must not be empty or whitespace")
            if key is not None and (any(c.isspace() for c in key) or not key.isprintable()):
                raise ValueError(f"{name}: must not contain whitespace or control characters")
        if self.api_key_file is not None and (not isinstance(self.api_key_file, str) or not self.api_key_file):
            bad("api_key_file", "must be a non-empty path or None")
        if not 0 <= self.shutdown_drain_seconds <= 3600:
            bad("shutdown_drain_seconds", "must be in [0, 3600]")
        parse_kv_events_config(self.kv_events_config)  # ValueError naming kv_events_config and the key
        if type(self.tp_size) is not int or self.tp_size < 1:
            bad("tp_size", "must be an integer >= 1 (ranks of tensor parallelism)")
        if self.dp_size != 1:
            bad("dp_size", "only 1 is supported: run one server per replica behind sglang-router")
        names = self.served_model_name
        if names is not None and (not names or not all(isinstance(n, str) and n for n in names)
                                  or len(set(names)) != len(names)):
            bad("served_model_name", "must be one or more distinct non-empty names")
        if self.chat_template is not None and (not isinstance(self.chat_template, str) or not self.chat_template):
            bad("chat_template", "must be the path of a Jinja template file")
        if self.log_level.lower() not in LOG_LEVELS:
            bad("log_level", f"must be one of {LOG_LEVELS}")
        if not 0 < self.port < 65536:
            bad("port", "must be in 1..65535")
        return self

    def replace(self, **changes: Any) -> "ServerArgs":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: unknown flag")
        return dataclasses.replace(self, **changes).validate()

    @property
    def kv_events(self) -> KVEventsConfig | None:
        return parse_kv_events_config(self.kv_events_config)

    @property
    def effective_chunk_size(self) -> int:
        """Largest extend per request per step; chunking off means 'no limit beyond the prefill budget'."""
        return self.chunked_prefill_size if self.chunked_prefill_size > 0 else 1 << 30


@dataclass(frozen=True)
class ModelConfig:
    """What the model runner needs from a HF config.json (Qwen2 / Qwen3 / Llama / Mistral), or from a GGUF's
    metadata (engine/models/gguf_file.py turns it into the same dict)."""

    architecture: str  # one of MODEL_TYPES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    eos_token_ids: tuple[int, ...]
    rope_scaling: dict | None = None
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before rotary

    @classmethod
    def from_hf(cls, path: str) -> "ModelConfig":
        """From `path`/config.json, or from the metadata of `path` when it is a .gguf file."""
        if path.endswith(GGUF_SUFFIX) and os.path.isfile(path):
            from engine.models.gguf_file import gguf_hf_config  # numpy + gguf, only for GGUF paths

            return cls.from_dict(gguf_hf_config(path), path)
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        return cls.from_dict(cfg, path)

    @classmethod
    def from_dict(cls, cfg: dict, path: str = "<dict>") -> "ModelConfig":
        mtype = cfg.get("model_type", "")
        if mtype not in MODEL_TYPES:
            raise ValueError(f"model_type: {mtype!r} in {path} is not supported ({', '.join(MODEL_TYPES)})")
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        rope_params = cfg.get("rope_parameters") or {}
        rope_theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        rope_scaling = cfg.get("rope_scaling")
        if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
            rope_scaling = rope_params
        return cls(
            architecture=mtype,
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or hidden // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            max_position_embeddings=_attended_context(cfg),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=(mtype == "qwen2") or bool(cfg.get("attention_bias", False)),
            eos_token_ids=eos_ids,
            rope_scaling=rope_scaling,
            qk_norm=(mtype == "qwen3"),
        )


def _attended_context(cfg: dict) -> int:
    """max_position_embeddings, capped at the sliding window where the checkpoint has one in effect: pairserve's
    attention is full-context, which equals sliding-window attention exactly while no sequence outgrows the window
    (Mistral-7B-v0.1's 4,096; later Mistral releases and Qwen's set none)."""
    context = cfg.get("max_position_embeddings", 4096)
    window = cfg.get("sliding_window")
    in_effect = cfg.get("model_type") == "mistral" or bool(cfg.get("use_sliding_window", False))
    return min(context, window) if in_effect and window else context
