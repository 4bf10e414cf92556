"""Quantized and dummy-weight models end to end: logits against HF transformers, streamed quantization, seeded
dummy weights from a config-only dir, and the real-size presets' shapes."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from engine.config import ModelConfig, ServerArgs
from engine.model_runner import ModelRunner
from engine.models import quant_load
from engine.models.loader import load_model
from engine.models.quant import QuantizedLinear, dequantize_int4, dequantize_int8, quantize_int4, quantize_int8
from engine.models.tiny import PRESETS, write_tiny_checkpoint
from engine.sampling_params import SamplingParams
from engine.scheduler import Req, Scheduler

HF_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 2000, (n,), generator=g).tolist() for n in (5, 23, 40)]


def _our_logits(path: str, **flags) -> torch.Tensor:
    """Prefill logits [3, vocab] of the three prompts through ModelRunner (fp32 model)."""
    args = ServerArgs(model_path=path, dtype="float32", kv_cache_tokens=512, **flags).validate()
    runner = ModelRunner(args, path)
    sch = Scheduler(args, runner.num_slots, runner.context_len, lambda ids: "")
    for i, p in enumerate(_prompts()):
        sch.add(Req(rid=str(i), input_ids=p, sampling=SamplingParams(max_new_tokens=1, temperature=0)))
    batch = sch.schedule()
    assert batch.batch_size == 3
    return runner.forward(batch)


def _hf_logits(path: str, method: str | None = None, group: int = 128, lm_head: bool = False) -> torch.Tensor:
    """HF's fp32 logits, with each decoder projection (and the LM head) replaced by its dequantized weight."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if method is not None:
        linears = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in HF_PROJECTIONS]
        if lm_head:
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie
            linears.append(model.lm_head)
        with torch.no_grad():
            for lin in linears:
                w = lin.weight
                deq = (dequantize_int8(*quantize_int8(w)) if method == "int8"
                       else dequantize_int4(*quantize_int4(w, group)))
                w.copy_(deq)
    with torch.no_grad():
        return torch.stack([model(torch.tensor([p])).logits[0, -1] for p in _prompts()])


@pytest.mark.parametrize("method,group,lm_head", [("int8", 128, False), ("int4", 32, False), ("int4", 32, True)])
def test_quantized_logits_match_hf_with_dequantized_weights(tiny_model_dir, method, group, lm_head):
    ours = _our_logits(tiny_model_dir, quantization=method, quant_group_size=group, quantize_lm_head=lm_head)
    ref = _hf_logits(tiny_model_dir, method, group, lm_head)
    exact = _hf_logits(tiny_model_dir)
    scale = ref.abs().amax().item()
    # only the kernels' bf16 activations and outputs separate us from HF on the same dequantized weights ...
    assert (ours - ref).abs().max().item() <= 0.02 * scale
    # ... and the model stays near the unquantized one (int4 drifts further), with the same top tokens mostly
    assert (ours - exact).abs().max().item() <= (0.1 if method == "int8" else 0.3) * scale
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_quantized_lm_head_matches_hf(tiny_llama_dir):
    """Untied LM head quantized too (Llama fixture: widths 96 and 200 take int8)."""
    ours = _our_logits(tiny_llama_dir, quantization="int8", quantize_lm_head=True)
    ref = _hf_logits(tiny_llama_dir, "int8", lm_head=True)
    assert (ours - ref).abs().max().item() <= 0.02 * ref.abs().amax().item()


def test_layers_are_quantized_as_they_stream(tiny_model_dir, monkeypatch):
    """When layer i's first tensor arrives, every earlier layer is already quantized and no later one is dense:
    at most one layer's dense linears exist at a time (sorted safetensors names keep each layer together)."""
    seen: list[tuple[int, list[str]]] = []
    orig = quant_load.stream_quantized

    def spy(model, weights, *a):
        for name, t in orig(model, weights, *a):
            i = quant_load.layer_index(name)
            if i is not None:  # layers whose linears are allocated and dense right now
                dense = [j for j, lyr in enumerate(model.layers)
                         if not isinstance(lyr.mlp.down_proj, QuantizedLinear)
                         and lyr.mlp.down_proj.weight.device.type != "meta"]
                seen.append((i, dense))
            yield name, t

    monkeypatch.setattr("engine.models.loader.stream_quantized", spy)
    model, _ = load_model(tiny_model_dir, "float32", quantization="int8")
    assert seen and all(dense == [i] for i, dense in seen)
    assert all(isinstance(m, QuantizedLinear) for lyr in model.layers
               for m in (lyr.self_attn.qkv_proj, lyr.self_attn.o_proj, lyr.mlp.gate_up_proj, lyr.mlp.down_proj))
    assert not isinstance(model.lm_head, QuantizedLinear)  # stays dense without --quantize-lm-head
    assert not any(p.device.type == "meta" for p in model.layers.parameters())  # (a prepacked lm_head keeps a meta one)


def test_skipped_checkpoint_tensors_do_not_end_a_layer_early(tiny_model_dir):
    """A per-layer rotary table (old Llama checkpoints) arriving first must not count toward its layer."""
    from engine.models.loader import iter_weights

    def with_rotary():
        for name, t in iter_weights(tiny_model_dir):
            if name.endswith("input_layernorm.weight"):  # each layer's first tensor in sorted order
                yield name.replace("input_layernorm.weight", "self_attn.rotary_emb.inv_freq"), torch.ones(16)
            yield name, t

    cfg = ModelConfig.from_hf(tiny_model_dir)
    with torch.device("meta"):
        from engine.models.qwen2 import Qwen2ForCausalLM

        model = Qwen2ForCausalLM(cfg)
    quant_load.materialize(model, "cpu", keep_layer_linears_meta=True)
    model.lm_head.weight = model.embed_tokens.weight  # tied, as load_model re-ties after materialising
    model.load_weights(quant_load.stream_quantized(model, with_rotary(), "int8", 128, "cpu"))
    assert all(isinstance(lyr.mlp.down_proj, QuantizedLinear) for lyr in model.layers)


@pytest.fixture(scope="module")
def config_only_dir(tmp_path_factory, tiny_model_dir) -> str:
    out = str(tmp_path_factory.mktemp("config-only"))
    for f in os.listdir(tiny_model_dir):
        if not f.endswith(".safetensors"):
            shutil.copy(os.path.join(tiny_model_dir, f), out)
    return out


def test_dummy_weights_are_deterministic(config_only_dir):
    cfg = ModelConfig.from_hf(config_only_dir)
    with torch.device("meta"):
        from engine.models.qwen2 import Qwen2ForCausalLM

        model = Qwen2ForCausalLM(cfg)
    a = list(quant_load.dummy_weights(model, 5, torch.float32))
    b = list(quant_load.dummy_weights(model, 5, torch.float32))
    c = list(quant_load.dummy_weights(model, 6, torch.float32))
    assert [(n, tuple(t.shape)) for n, t in a] == model.checkpoint_tensors()
    assert all(na == nb and torch.equal(ta, tb) for (na, ta), (nb, tb) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    tensors = dict(a)
    assert abs(tensors["model.embed_tokens.weight"].std().item() - quant_load.DUMMY_STD) < 0.002
    norm = tensors["model.layers.0.input_layernorm.weight"]
    assert (norm - 1).abs().max() <= quant_load.DUMMY_NORM_NOISE and norm.std() > 0
    # the same seed gives the same model: equal logits from two loads
    l1, l2 = (_our_logits(config_only_dir, load_format="dummy", seed=5) for _ in range(2))
    assert torch.equal(l1, l2)
    assert not torch.equal(l1, _our_logits(config_only_dir, load_format="dummy", seed=6))


def test_dummy_load_needs_no_weights_and_quantizes(config_only_dir):
    with pytest.raises(FileNotFoundError):
        load_model(config_only_dir, "float32")  # auto format looks for safetensors
    q1, _ = load_model(config_only_dir, "float32", load_format="dummy", quantization="int4", quant_group_size=32,
                       seed=1)
    q2, _ = load_model(config_only_dir, "float32", load_format="dummy", quantization="int4", quant_group_size=32,
                       seed=1)
    assert isinstance(q1.layers[0].mlp.gate_up_proj, QuantizedLinear)
    s1, s2 = q1.layers.state_dict(), q2.layers.state_dict()  # the quantized buffers, norms and biases
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_dummy_engine_generates_the_same_tokens_twice(config_only_dir, make_engine):
    sp = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
    outs = []
    for _ in range(2):
        eng = make_engine(config_only_dir, load_format="dummy", quantization="int8", seed=3)
        outs.append([o["output_ids"] for o in eng.generate(input_ids=_prompts(), sampling_params=sp)])
    assert outs[0] == outs[1] and all(len(o) == 8 for o in outs[0])



@pytest.mark.parametrize("method,group", [("int8", 128), ("int4", 32)])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_decode_logprobs_match_hf_with_dequantized_weights(tiny_model_dir, make_engine, backend, method, group):
    """Prefill and decode of a quantized fp32 model: on the `cpu` backend through the compiled kernels (fp32
    activations: dense matmuls of the dequantized weight for the prompt, GEMVs for decode steps), on `torch`
    through torch's kernels (bf16 activations). Both stay on HF's dequantized model, token by token."""
    from engine.kernels.cpu.int4_gemv import CpuInt4Gemv, torch_int4pack_layout
    from engine.kernels.cpu.int8_gemv import CpuInt8Gemv
    from transformers import AutoModelForCausalLM

    if backend == "cpu" and shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    eng = make_engine(tiny_model_dir, quantization=method, quant_group_size=group, attention_backend=backend)
    kernel = CpuInt8Gemv if method == "int8" else CpuInt4Gemv
    compiled = backend == "cpu" and (method == "int8" or torch_int4pack_layout() is not None)
    gemvs = {type(m.gemv) for m in eng.loop.runner.model.modules() if isinstance(m, QuantizedLinear)}
    assert gemvs == ({kernel} if compiled else {type(None)})
    prompt = _prompts()[1]
    out = eng.generate(input_ids=prompt, sampling_params={"max_new_tokens": 6, "temperature": 0, "ignore_eos": True},
                       return_logprob=True, top_logprobs_num=2)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, lin in model.named_modules():
            if name.rsplit(".", 1)[-1] in HF_PROJECTIONS:
                w = lin.weight
                lin.weight.copy_(dequantize_int8(*quantize_int8(w)) if method == "int8"
                                 else dequantize_int4(*quantize_int4(w, group)))
        ref = torch.log_softmax(model(torch.tensor([prompt + out["output_ids"]])).logits[0], dim=-1)
    for k, (lp, tok, _) in enumerate(out["meta_info"]["output_token_logprobs"]):
        row = ref[len(prompt) - 1 + k]
        assert abs(lp - row[tok].item()) <= 0.01
        top2 = row.topk(2).values
        assert tok == row.argmax().item() or (top2[0] - top2[1]).item() < 0.05  # greedy, up to near ties


@pytest.mark.parametrize("name,params,vocab,tied,kv_heads,head_dim", [
    ("qwen2.5-0.5b", 494_032_768, 151_936, True, 2, 64), ("qwen2.5-1.5b", 1_543_714_304, 151_936, True, 2, 128),
    ("qwen2.5-7b", 7_615_616_512, 152_064, False, 4, 128), ("qwen2.5-14b", 14_770_033_664, 152_064, False, 8, 128),
])
def test_real_size_presets_write_config_and_tokenizer_only(tmp_path, name, params, vocab, tied, kv_heads, head_dim):
    path = write_tiny_checkpoint(str(tmp_path / name), preset=name)
    assert sorted(os.listdir(path)) == ["config.json", "generation_config.json", "tokenizer.json",
                                        "tokenizer_config.json"]
    cfg = ModelConfig.from_hf(path)
    assert (cfg.vocab_size, cfg.tie_word_embeddings, cfg.num_kv_heads, cfg.head_dim) == (vocab, tied, kv_heads, head_dim)
    assert PRESETS[name].param_count() == params  # the public Qwen2.5 parameter counts
    with torch.device("meta"):  # the model the engine builds has exactly those parameters
        from engine.models.qwen2 import Qwen2ForCausalLM

        model = Qwen2ForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == params
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["max_position_embeddings"] == 32_768
