"""SGLang's launch flags: an SGLang launch line starts pairserve and each flag does what it says; flags for
features pairserve lacks exit 2 naming the field."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = ("{% for m in messages %}<<{{ m.role }}>>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<<assistant>>{% endif %}")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.parametrize("args,needle", [
    (("--dp-size", "2"), "dp_size"),
    (("--quantization", "fp8"), "quantization"),
    (("--load-format", "dummy"), "load_format"),
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
                       "--log-level", "info")
    info = srv.info()
    assert info["max_total_tokens"] == 1024 and info["random_seed"] == 3 and info["seed"] == 3
    assert info["context_length"] == 2048 and info["mem_fraction_static"] == 0.5
    assert info["chunked_prefill_size"] == 256 and info["max_running_requests"] == 8
    assert info["schedule_policy"] == "fcfs" and info["disable_radix_cache"] is True
    assert info["served_model_name"] == "first" and info["served_model_names"] == ["first", "second"]
    msgs = [{"role": "user", "content": "hi there"}]
    with srv.client() as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["first", "second"]
        r = c.post("/v1/chat/completions", json={"model": "second", "messages": msgs, "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == "second"
        assert c.post("/v1/chat/completions", json={"model": srv.model_name, "messages": msgs}).status_code == 404
        tokens = c.post("/tokenize", json={"messages": msgs}).json()["tokens"]
        assert c.get("/metrics").status_code == 200
    tok = load_tokenizer(tiny_model_dir)
    assert tokens == tok.encode("<<user>>hi there\n<<assistant>>", add_special_tokens=False)
    assert f"pairserve is ready on {srv.url} (model 'first'); try: curl {srv.url}/v1/chat/completions" in srv.log()


def test_metrics_can_be_turned_off(start_server):
    srv = start_server("--no-enable-metrics")
    with srv.client() as c:
        assert c.get("/metrics").status_code == 404
        assert c.get("/health").status_code == 200
