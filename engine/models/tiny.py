"""Deterministic random Qwen2 checkpoints for tests and benchmarks, written without network or model hub.

`write_tiny_checkpoint(out_dir, preset, seed)` writes a HF-format dir (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json) that `transformers` loads as Qwen2ForCausalLM
with no missing keys. Same arguments give byte-identical files. The tokenizer is a byte-level BPE trained at
write time on a built-in corpus (independent of `seed`) with exactly the pre-tokenizer pipeline that
transformers' Qwen2Tokenizer forces on load, so `tokenizers` and `AutoTokenizer` produce the same ids.

Like real Qwen checkpoints, the model's `vocab_size` is the tokenizer size padded up to a multiple of 64:
ids >= len(tokenizer) exist in the logits but decode to nothing.

CLI: `python -m engine.models.tiny DIR [--preset tiny|bench|qwen2.5-0.5b|qwen2.5-1.5b|qwen2.5-7b|qwen2.5-14b]
[--seed N]`. The qwen2.5-* presets write config.json + tokenizer only: serve them with `--load-format dummy`.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import types
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from engine.models.chat_templates import CHATML_END, CHATML_START, ENDOFTEXT, chatml_template
from engine.models.real_shapes import REAL_MAX_POSITIONS, REAL_SHAPES, REAL_TOKENIZER_SIZE

# Same pattern as transformers' qwen2 PRETOKENIZE_REGEX; AutoTokenizer re-applies it on load, so ours must match.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = (ENDOFTEXT, CHATML_START, CHATML_END)
VOCAB_PAD_MULTIPLE = 64
NORM_WEIGHT_NOISE = 0.1  # norm weights are 1 + N(0, this): a dropped or misapplied norm weight changes outputs
WEIGHT_STD = 0.02


@dataclass(frozen=True)
class TinyPreset:
    """Shape of one generated model; `tokenizer_size` counts the BPE vocab plus the 3 special tokens."""

    tokenizer_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tie_word_embeddings: bool
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    model_vocab_size: int | None = None  # a real model's (padded) vocab; None: the tokenizer's size padded
    with_weights: bool = True  # False: config + tokenizer only, for --load-format dummy (real sizes)

    @property
    def vocab_size(self) -> int:
        if self.model_vocab_size is not None:
            return self.model_vocab_size
        return -(-self.tokenizer_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def param_count(self) -> int:
        """Parameters as HF counts them (a tied lm_head is not counted twice)."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attn = (h * h + h) + 2 * (h * kv + kv) + h * h  # q, k, v carry biases in Qwen2; o does not
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_layers * per_layer + h


PRESETS = types.MappingProxyType({
    # ~1.0M params; tied embeddings; head_dim 32, 2 query heads per kv head.
    "tiny": TinyPreset(tokenizer_size=2000, hidden_size=128, intermediate_size=352, num_layers=4,
                       num_heads=4, num_kv_heads=2, tie_word_embeddings=True),
    # ~31M params; untied lm_head; head_dim 64, 4 query heads per kv head.
    "bench": TinyPreset(tokenizer_size=8192, hidden_size=512, intermediate_size=1408, num_layers=8,
                        num_heads=8, num_kv_heads=2, tie_word_embeddings=False),
    # Public Qwen2.5 shapes, written without weights (engine/models/real_shapes.py).
    **{name: TinyPreset(tokenizer_size=REAL_TOKENIZER_SIZE, hidden_size=h, intermediate_size=inter,
                        num_layers=layers, num_heads=heads, num_kv_heads=kv, tie_word_embeddings=tied,
                        max_position_embeddings=REAL_MAX_POSITIONS, rms_norm_eps=eps, model_vocab_size=vocab,
                        with_weights=False)
       for name, (h, inter, layers, heads, kv, tied, vocab, eps) in REAL_SHAPES.items()},
})

_PROSE = """\
You are a helpful assistant. The user asks a question and the system gives an answer, please be brief.
Parse this log message into a template: replace every variable part with <*> and keep the constant words.
Here are some examples of log messages and their templates; what is the template of the following log?
The quick brown fox jumps over the lazy dog. It's a sentence that uses every letter, and we'll keep it.
A scheduler decides which requests run next; a cache remembers what it has already computed.
When the server starts, it loads the model, warms up the kernels, and listens on port 30000.
She said, "Don't worry -- the results aren't final yet." They're checking the numbers again.
Rain fell on the old stone bridge while the river carried leaves toward the sea.
Engineers measure throughput in requests per second and latency in milliseconds (p50, p90, p99).
Is the answer correct? Maybe. Compare it with the reference, token by token, before you decide!
Paris is the capital of France; Berlin is the capital of Germany; Tokyo is the capital of Japan.
Numbers like 3.14159, 2,048 and 1e-6 appear in configs, while dates look like 2024-05-17.
Café, naïve, façade, jalapeño, Zürich, São Paulo, Kraków, Ångström, smörgåsbord, déjà vu.
日本語のテキスト、中文文本、한국어 문장, русский текст, ελληνικά, עברית, العربية, हिन्दी. 🙂🚀✨
"""

_CODE = """\
def extend(self, req_ids: list[int], extend_len: int) -> None:
    for rid in req_ids:
        self.table[rid] += extend_len  # grow the slot table
class RadixNode:
    __slots__ = ("key", "value", "children", "lock_ref")
{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": true}
for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; } return sum != 0 ? sum : -1;
$ python -m pytest -q tests/ && echo "ok" || exit 1
SELECT id, name FROM users WHERE age >= 21 ORDER BY name ASC;
<div class="row"><span id='x'>&amp; &lt;tag&gt;</span></div>
"""

_LOG_TEMPLATES = (
    "{date} {time} INFO dfs.DataNode$PacketResponder: Received block blk_{num} of size {size} from /{ip}",
    "{date} {time} WARN dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: {ip}:{port}",
    "[{weekday} {month} {day} {time} {year}] [error] [client {ip}] File does not exist: /var/www/{word}",
    "{month} {day} {time} combo sshd(pam_unix)[{pid}]: authentication failure; rhost={ip} user={word}",
    "{month} {day} {time} LabSZ sshd[{pid}]: Failed password for invalid user {word} from {ip} port {port} ssh2",
    "{date} {time} ERROR executor.Executor: Exception in task {num}.0 in stage {size}.0 (TID {pid})",
    "{date}T{time}Z level=debug msg=\"cache hit\" request_id={hex} tokens={size} latency_ms={num}",
    "- {num} {date} R{day}-M{pid}-N{port} RAS KERNEL INFO {size} double-hummer alignment exceptions",
)
_LOG_WORDS = ("admin", "root", "test", "oracle", "guest", "index.html", "favicon.ico", "images", "backup", "www")
_SYLLABLES = tuple(c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ar", "en", "ol"))


def _corpus_lines() -> list[str]:
    """Built-in training text: prose, code, Loghub-style log lines and syllable pseudo-words (for merge count)."""
    rng = random.Random(20241122)  # fixed: the tokenizer does not depend on the weight seed
    # Repeats give real words and code tokens the counts that make BPE merge them early, as in a natural corpus.
    lines = _PROSE.splitlines() * 40 + _CODE.splitlines() * 20
    for i in range(1200):
        fields = dict(
            date=f"20{rng.randint(15, 24)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            time=f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            weekday=rng.choice(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")),
            month=rng.choice(("Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Oct", "Dec")),
            day=rng.randint(1, 28), year=rng.randint(2005, 2024), pid=rng.randint(100, 99999),
            num=rng.randint(0, 10**12), size=rng.randint(1, 70000), port=rng.randint(1024, 65535),
            ip=".".join(str(rng.randint(1, 254)) for _ in range(4)), hex=f"{rng.getrandbits(48):012x}",
            word=rng.choice(_LOG_WORDS),
        )
        lines.append(_LOG_TEMPLATES[i % len(_LOG_TEMPLATES)].format(**fields))
    for _ in range(2500):
        words = ("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(8))
        lines.append(" ".join(words).capitalize() + rng.choice((".", ",", "?", "!", ";", ":")))
    return lines


def _qwen2_pipeline(tokenizer: Tokenizer) -> None:
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()


def train_tokenizer(tokenizer_size: int) -> Tokenizer:
    """Byte-level BPE of exactly `tokenizer_size` ids; the special tokens take the last three ids, as in Qwen."""
    tokenizer = Tokenizer(models.BPE())
    _qwen2_pipeline(tokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=tokenizer_size - len(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tokenizer.get_vocab_size() == tokenizer_size, "built-in corpus too small for the requested vocab"
    return tokenizer


def random_state_dict(preset: TinyPreset, seed: int) -> dict[str, torch.Tensor]:
    """HF Qwen2 parameter names → fp32 tensors; one generator walks the names in a fixed order."""
    gen = torch.Generator().manual_seed(seed)
    h, kv_dim, inter = preset.hidden_size, preset.num_kv_heads * preset.head_dim, preset.intermediate_size

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * WEIGHT_STD

    def norm_weight() -> torch.Tensor:  # [h]
        return 1.0 + torch.randn(h, generator=gen) * NORM_WEIGHT_NOISE

    state = {"model.embed_tokens.weight": normal(preset.vocab_size, h)}
    for i in range(preset.num_layers):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = norm_weight()
        state[p + "self_attn.q_proj.weight"] = normal(h, h)
        state[p + "self_attn.q_proj.bias"] = normal(h)
        state[p + "self_attn.k_proj.weight"] = normal(kv_dim, h)
        state[p + "self_attn.k_proj.bias"] = normal(kv_dim)
        state[p + "self_attn.v_proj.weight"] = normal(kv_dim, h)
        state[p + "self_attn.v_proj.bias"] = normal(kv_dim)
        state[p + "self_attn.o_proj.weight"] = normal(h, h)
        state[p + "post_attention_layernorm.weight"] = norm_weight()
        state[p + "mlp.gate_proj.weight"] = normal(inter, h)
        state[p + "mlp.up_proj.weight"] = normal(inter, h)
        state[p + "mlp.down_proj.weight"] = normal(h, inter)
    state["model.norm.weight"] = norm_weight()
    if not preset.tie_word_embeddings:
        state["lm_head.weight"] = normal(preset.vocab_size, h)
    return state


def _hf_config(preset: TinyPreset, ids: dict[str, int]) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": preset.vocab_size,
        "hidden_size": preset.hidden_size,
        "intermediate_size": preset.intermediate_size,
        "num_hidden_layers": preset.num_layers,
        "num_attention_heads": preset.num_heads,
        "num_key_value_heads": preset.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": preset.max_position_embeddings,
        "rms_norm_eps": preset.rms_norm_eps,
        "rope_theta": preset.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": preset.tie_word_embeddings,
        "use_sliding_window": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "initializer_range": WEIGHT_STD,
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": ids[CHATML_END],
        "pad_token_id": ids[ENDOFTEXT],
        "torch_dtype": "float32",
    }


def _tokenizer_config(preset: TinyPreset) -> dict:
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": CHATML_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": preset.max_position_embeddings,
        "chat_template": chatml_template(),
    }


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_tiny_checkpoint(out_dir: str, preset: str = "tiny", seed: int = 0) -> str:
    """Write the checkpoint files into `out_dir` (created if needed, files overwritten); return `out_dir`."""
    if preset not in PRESETS:
        raise ValueError(f"preset: must be one of {sorted(PRESETS)} (got {preset!r})")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be a non-negative int (got {seed!r})")
    shape = PRESETS[preset]
    os.makedirs(out_dir, exist_ok=True)

    tokenizer = train_tokenizer(shape.tokenizer_size)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}

    if shape.with_weights:
        save_file(random_state_dict(shape, seed), os.path.join(out_dir, "model.safetensors"),
                  metadata={"format": "pt"})
    _write_json(os.path.join(out_dir, "config.json"), _hf_config(shape, ids))
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), _tokenizer_config(shape))
    # Qwen's instruct checkpoints stop on either end marker; keep a list here so readers handle both forms.
    _write_json(os.path.join(out_dir, "generation_config.json"), {
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": [ids[CHATML_END], ids[ENDOFTEXT]],
        "pad_token_id": ids[ENDOFTEXT],
        "do_sample": False,
    })
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a deterministic random Qwen2 checkpoint.")
    parser.add_argument("out_dir")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_checkpoint(args.out_dir, preset=args.preset, seed=args.seed)
    shape = PRESETS[args.preset]
    what = "checkpoint" if shape.with_weights else "config + tokenizer (serve with --load-format dummy)"
    print(f"wrote {args.preset} {what} ({shape.param_count():,} params) to {path}")


if __name__ == "__main__":
    main()
