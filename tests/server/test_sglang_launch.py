"""SGLang's launch flags: an SGLang launch line starts pairserve and each flag does what it says; flags for
features pairserve lacks exit 2 naming the field."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = ("{% if persona %}[{{ persona }}]{% endif %}{% for m in messages %}<<{{ m.role }}>>{{ m.content }}\n"
            "{% endfor %}{% if add_generation_prompt %}<<assistant>>{% endif %}")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.parametrize("args,needle", [
    (("--dp-size", "2"), "dp_size"),
    (("--quantization", "fp8"), "quantization"),
    (("--load-format", "pt"), "load_format"),
    (("--chat-template", "/nonexistent/template.jinja"), "chat_template"),
    (("--log-level", "verbose"), "log_level"),
    (("--served-model-name", "a", "a"), "served_model_name"),
])
def test_sglang_flags_pairserve_lacks_exit_2_naming_the_field(args, needle):
    res = _run_cli(*args)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr


def test_an_sglang_launch_line_serves_as_asked(start_server, tmp_path, tiny_model_dir):
    from engine.models.loader import load_tokenizer

    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    srv = start_server("--model-path", tiny_model_dir, "--mem-fraction-static", "0.5", "--max-total-tokens", "1024",
                       "--random-seed", "3", "--tp", "1", "--dp-size", "1", "--context-length", "2048",
                       "--chunked-prefill-size", "256", "--max-running-requests", "8", "--schedule-policy", "fcfs",
                       "--disable-radix-cache", "--enable-metrics", "--trust-remote-code", "--load-format", "auto",
                       "--served-model-name", "first", "second", "--chat-template", str(template),
                       "--log-level", "info", "--log-requests")
    info = srv.info()
    assert info["max_total_tokens"] == 1024 and info["random_seed"] == 3 and info["seed"] == 3
    assert info["context_length"] == 2048 and info["mem_fraction_static"] == 0.5
    assert info["chunked_prefill_size"] == 256 and info["max_running_requests"] == 8
    assert info["schedule_policy"] == "fcfs" and info["disable_radix_cache"] is True
    assert info["served_model_name"] == "first" and info["served_model_names"] == ["first", "second"]
    msgs = [{"role": "user", "content": "hi there"}]
    with srv.client() as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["first", "second"]
        # ignore_eos: two tokens for sure, so a decode step runs and its batch line is logged
        r = c.post("/v1/chat/completions", json={"model": "second", "messages": msgs, "max_tokens": 2,
                                                 "ignore_eos": True})
        assert r.status_code == 200 and r.json()["model"] == "second"
        assert c.post("/v1/chat/completions", json={"model": srv.model_name, "messages": msgs}).status_code == 404
        tokens = c.post("/tokenize", json={"messages": msgs}).json()["tokens"]
        assert c.get("/metrics").status_code == 200
        kw = c.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 1, "rid": "kw-1",
                                                  "chat_template_kwargs": {"persona": "pirate"}}).json()
        cont = c.post("/v1/chat/completions", json={"messages": msgs + [{"role": "assistant", "content": "Sure, the"}],
                                                    "max_tokens": 1, "continue_final_message": True}).json()
    tok = load_tokenizer(tiny_model_dir)
    assert tokens == tok.encode("<<user>>hi there\n<<assistant>>", add_special_tokens=False)
    n = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    assert kw["usage"]["prompt_tokens"] == n("[pirate]<<user>>hi there\n<<assistant>>")
    assert cont["usage"]["prompt_tokens"] == n("<<user>>hi there\n<<assistant>>Sure, the")
    log = srv.wait_log("request kw-1 finished")
    assert f"pairserve is ready on {srv.url} (model 'first'); try: curl {srv.url}/v1/chat/completions" in log
    assert "Decode batch. #running-req: " in srv.wait_log("Decode batch. #running-req: ")  # the scheduler's own log
    # each request was prefilled alone in one chunk, none from the cache (--disable-radix-cache)
    assert re.search(r"Prefill batch\. #new-seq: [1-9]\d*, #new-token: [1-9]\d*, #cached-token: 0, ", log)
    line = next(ln for ln in log.splitlines() if "request kw-1 finished" in ln)
    assert "finished (length): prompt_tokens=" in line and "completion_tokens=1" in line and "e2e=" in line


def test_metrics_can_be_turned_off(start_server):
    srv = start_server("--no-enable-metrics")
    with srv.client() as c:
        assert c.get("/metrics").status_code == 404
        assert c.get("/health").status_code == 200
