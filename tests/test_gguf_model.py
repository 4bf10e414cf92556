"""`--model FILE.gguf`: tiny GGUFs written here from the tiny random checkpoints (as llama.cpp's converter lays them
out) load and match HF transformers run on the same (dequantized) weights; bad files fail with one clear error."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.config import ModelConfig, ServerArgs
from engine.model_runner import ModelRunner
from engine.models import gguf_file
from engine.models.loader import load_tokenizer, resolve_model_path
from engine.sampling_params import SamplingParams
from engine.scheduler import Req, Scheduler

Q = gguf.GGMLQuantizationType
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TO_GGUF = {**{hf: g for g, hf in gguf_file._GLOBAL_TENSORS.items()},
            **{hf: g for g, hf in gguf_file._LAYER_TENSORS.items()}}


def _gguf_name(hf_name: str) -> str:
    if hf_name in _TO_GGUF:
        return _TO_GGUF[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.N.<suffix>
    return f"blk.{layer}.{_TO_GGUF[rest]}"


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter order for llama Q/K rows: each head's rotary halves interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(head_dim: int, rope: dict) -> np.ndarray:
    """llama.cpp's converter: 1 for short wavelengths, `factor` for long ones, the smooth blend between."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_ctx = rope["original_max_position_embeddings"]
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factors = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)  # [head_dim / 2]


def write_gguf(hf_dir: str, out: str, qtype: Q = Q.F32, arch: str | None = None,
               tensor_type: dict[str, Q] | None = None) -> dict[str, torch.Tensor]:
    """Write `hf_dir` as a GGUF; 2-D weights in `qtype` where their rows fit its blocks (else F32, like llama.cpp),
    norms and biases F32. Returns HF name -> the fp32 values the file holds (quantized, then dequantized)."""
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(hf_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    arch = arch or {"mistral": "llama"}.get(cfg["model_type"], cfg["model_type"])
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope = cfg.get("rope_parameters") or {}
    w = gguf.GGUFWriter(out, arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta", rope.get("rope_theta", 10000.0)))

    vocab = dict(tok["model"]["vocab"], **{t["content"]: t["id"] for t in tok["added_tokens"]})
    special = {t["content"] for t in tok["added_tokens"] if t["special"]}
    tokens = [None] * cfg["vocab_size"]
    for token, i in vocab.items():
        tokens[i] = token
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    for i in range(len(vocab), cfg["vocab_size"]):  # the model's padded ids, as llama.cpp's converter fills them
        tokens[i], types[i] = f"[PAD{i}]", gguf.TokenType.UNUSED
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    with open(os.path.join(hf_dir, "tokenizer_config.json")) as f:
        w.add_chat_template(json.load(f)["chat_template"])

    if rope.get("rope_type") == "llama3":  # Llama-3.1 files: the scaling as a tensor of per-frequency divisors
        w.add_tensor("rope_freqs.weight", _llama3_rope_factors(head_dim, rope))
    stored = {}
    for name, tensor in load_file(os.path.join(hf_dir, "model.safetensors")).items():
        data = tensor.float().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            data = _permute(data, heads if "q_proj" in name else kv_heads)
        kind = (tensor_type or {}).get(name, qtype)
        block = gguf.GGML_QUANT_SIZES[kind][0]
        if data.ndim == 1 or data.shape[-1] % block:
            kind = Q.F32
        try:
            raw = gguf.quants.quantize(data, kind)
        except NotImplementedError:
            # No quantizer in the gguf package (K-quants, Q8_1): random blocks. Bytes below 0x20 make every fp16
            # scale in them a small positive normal number, so the dequantized weights stay finite and small.
            rng = np.random.default_rng(len(stored))
            raw = rng.integers(0, 0x20, gguf.quant_shape_to_byte_shape(data.shape, kind), dtype=np.uint8)
        w.add_tensor(_gguf_name(name), raw, raw_dtype=kind)
        try:
            back = gguf.quants.dequantize(raw, kind).reshape(data.shape)
        except NotImplementedError:  # a type the loader must refuse: nothing to compare against
            continue
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            back = gguf_file.unpermute_rope_rows(back, heads if "q_proj" in name else kv_heads)
        stored[name] = torch.from_numpy(np.array(back, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def _hf_on(hf_dir: str, state: dict[str, torch.Tensor]):
    """HF transformers' model of `hf_dir` with exactly `state` as its weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)  # tied lm_head: not stored
    return model


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in (3, 17, 40, 64)]


def _our_last_logits(path: str, prompts: list[list[int]]) -> torch.Tensor:
    runner = ModelRunner(ServerArgs(model_path=path, dtype="float32", kv_cache_tokens=1024), path)
    sch = Scheduler(ServerArgs(model_path=path, kv_cache_tokens=1024), runner.num_slots, runner.context_len,
                    lambda ids: "")
    for i, p in enumerate(prompts):
        sch.add(Req(rid=str(i), input_ids=p, sampling=SamplingParams(max_new_tokens=1, temperature=0)))
    batch = sch.schedule()
    assert batch.batch_size == len(prompts)
    return runner.forward(batch)  # [B, vocab]


ARCH_DIRS = {"qwen2": "tiny_model_dir", "llama": "tiny_llama_dir", "qwen3": "tiny_qwen3_dir",
             "llama3": "tiny_llama3_dir"}


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
@pytest.mark.parametrize("arch", list(ARCH_DIRS))
def test_gguf_logits_match_hf_on_the_stored_weights(arch, qtype, request, tmp_path):
    hf_dir = request.getfixturevalue(ARCH_DIRS[arch])
    path = str(tmp_path / f"{arch}-{qtype.name}.gguf")
    stored = write_gguf(hf_dir, path, qtype)
    ref_cfg, cfg = ModelConfig.from_hf(hf_dir), ModelConfig.from_hf(path)
    differ = {"eos_token_ids"} | ({"rope_scaling"} if arch == "llama3" else set())  # llama3: as freq_factors
    assert {k: v for k, v in vars(cfg).items() if k not in differ} == \
        {k: v for k, v in vars(ref_cfg).items() if k not in differ}
    prompts = _prompts(2000)
    ours = _our_last_logits(path, prompts)
    # The same fp32 weights as the safetensors dir: the same logits, bit for bit (llama3's rotary frequencies come
    # from the file's fp32 rope_freqs, not computed in fp64 from the formula: only the HF check below holds there).
    if qtype == Q.F32 and arch != "llama3":
        assert torch.equal(ours, _our_last_logits(hf_dir, prompts))
    hf = _hf_on(hf_dir, stored)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ref = hf(torch.tensor([p])).logits[0, -1]
            assert (ours[i] - ref).abs().max().item() <= 1e-4, (arch, qtype.name, i)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q3_K, Q.Q2_K], ids=lambda q: q.name)
def test_gguf_k_quants_match_hf_on_the_stored_weights(qtype, tiny_model_dir, tmp_path):
    """K-quants (256-value super-blocks) on a Llama of hidden 256: random blocks, dequantized by the reader, must
    give HF's logits on the values the file holds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_dir = str(tmp_path / "llama256")
    torch.manual_seed(5)
    LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=False)).save_pretrained(hf_dir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tiny_model_dir, f), hf_dir)
    path = str(tmp_path / f"llama256-{qtype.name}.gguf")
    stored = write_gguf(hf_dir, path, qtype)
    assert sum(t.tensor_type == qtype for t in gguf.GGUFReader(path).tensors) == 9  # every 2-D weight
    prompts = _prompts(2000)
    ours = _our_last_logits(path, prompts)
    hf = _hf_on(hf_dir, stored)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ref = hf(torch.tensor([p])).logits[0, -1]
            scale = ref.abs().max().item()  # random blocks: logits up to ~100, fp32 rounding grows with them
            assert scale > 0.01  # the random blocks gave a model that computes something
            assert (ours[i] - ref).abs().max().item() <= 1e-4 * max(1.0, scale), (qtype.name, i)


def test_gguf_greedy_tokens_match_hf_q8_0(tiny_llama_dir, make_engine, tmp_path):
    path = str(tmp_path / "llama-q8.gguf")
    hf = _hf_on(tiny_llama_dir, write_gguf(tiny_llama_dir, path, Q.Q8_0))
    eng = make_engine(path, max_running_requests=4, chunked_prefill_size=16, max_prefill_tokens=48)
    prompts = _prompts(2000)
    outs = eng.generate(input_ids=prompts, sampling_params={"max_new_tokens": 16, "temperature": 0,
                                                           "ignore_eos": True})
    for out, p in zip(outs, prompts):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0,
                          attention_mask=torch.ones(1, len(p), dtype=torch.long))
        assert out["output_ids"] == ref[0, len(p):].tolist()


def test_gguf_tokenizer_and_chat_template_from_metadata(tiny_model_dir, tmp_path):
    path = str(tmp_path / "tiny.gguf")
    write_gguf(tiny_model_dir, path, Q.F16)
    ours, ref = load_tokenizer(path), load_tokenizer(tiny_model_dir)
    text = ("081109 203615 148 INFO dfs.DataNode: Received block blk_-16089 of size 91178 from /10.250.10.6\n"
            "It's a test -- don't worry. <|im_start|>user\nhi<|im_end|>")
    assert ours(text)["input_ids"] == ref(text)["input_ids"]
    assert ours.decode(ours(text)["input_ids"]) == text
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert (ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert ours.eos_token == "<|im_end|>" and ours.pad_token == "<|endoftext|>"


def _unknown_arch_gguf(path: str) -> None:
    w = gguf.GGUFWriter(path, "gemma2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unknown_architecture_is_refused(tmp_path):
    path = str(tmp_path / "gemma.gguf")
    _unknown_arch_gguf(path)
    for call in (resolve_model_path, ModelConfig.from_hf, load_tokenizer):
        with pytest.raises(ValueError, match="architecture 'gemma2'.*not supported"):
            call(path)


def test_tensor_type_without_dequantizer_is_refused(tiny_llama_dir, tmp_path):
    path = str(tmp_path / "q8_1.gguf")
    write_gguf(tiny_llama_dir, path, tensor_type={"model.layers.1.mlp.up_proj.weight": Q.Q8_1})
    with pytest.raises(ValueError, match="'blk.1.ffn_up.weight'.*type Q8_1.*cannot dequantize"):
        resolve_model_path(path)


def _server_cmd(model: str) -> tuple[list[str], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "server", "--model", model, "--port", str(port), "--log-level", "warning",
            "--kv-cache-tokens", "2048", "--dtype", "float32"], port


def test_server_serves_a_gguf_like_its_checkpoint(tiny_model_dir, make_engine, tmp_path):
    """The HTTP server's processes (tokenizer manager, scheduler, detokenizer) all read the file: a chat completion
    from the F32 GGUF is the engine's greedy answer from the safetensors checkpoint it was written from."""
    import httpx

    path = str(tmp_path / "tiny.gguf")
    write_gguf(tiny_model_dir, path, Q.F32)
    messages = [{"role": "user", "content": "Parse this log message into a template, please."}]
    eng = make_engine(tiny_model_dir)
    prompt = eng.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ref = eng.generate(prompt, {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True})
    cmd, port = _server_cmd(path)
    log = tmp_path / "server.log"
    with open(log, "wb") as f:  # a file, not a pipe: a chatty server never blocks on a full pipe
        proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=f, stderr=f)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60.0, json={
            "model": "tiny.gguf", "messages": messages, "max_tokens": 12, "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "tiny.gguf"
        assert body["usage"]["prompt_tokens"] == len(eng.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert body["choices"][0]["message"]["content"] == ref["text"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_server_exits_nonzero_naming_the_bad_gguf(tmp_path):
    path = str(tmp_path / "gemma.gguf")
    _unknown_arch_gguf(path)
    cmd, _ = _server_cmd(path)
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "architecture 'gemma2'" in proc.stderr and "Traceback" not in proc.stderr
