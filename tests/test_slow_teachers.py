"""Real packaged models as teachers: llama.cpp in-process and behind a real llama_cpp.server.

Run: pytest -m slow tests/test_slow_teachers.py   (a few minutes on 2 cores)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def cache_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_packaged_teachers_on_20_obqa_questions_survive_sigkill(shared_data, tmp_path):
    cfg = Path(__file__).parent.parent / "configs" / "quickstart.yaml"
    cmd = [str(BIN / "tinyllm-distill"), "generate", str(cfg), "data.name=tinyllm-obqa", f"data.path={shared_data / 'obqa'}",
           "data.max_train=20", f"rationales.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}", "--no-mlflow"]
    first = tmp_path / "cache" / "smollm2.jsonl"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and len(cache_lines(first)) < 5:
        time.sleep(0.2)  # polls the cache the run appends to, until the run has written five rationales
    assert proc.poll() is None, "the run ended before writing five rationales"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Killed part-way whatever the machine's load: the 40 rationales take minutes, the kill one poll.
    assert 5 <= len(cache_lines(first)) and len(cache_lines(first) + cache_lines(tmp_path / "cache" / "gemma3.jsonl")) < 40

    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    records = cache_lines(first) + cache_lines(tmp_path / "cache" / "gemma3.jsonl")
    assert len(records) == 40 and len({rec["key"] for rec in records}) == 40
    assert {rec["teacher"] for rec in records} == {"smollm2", "gemma3"}

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    report = json.loads(again.stdout)
    assert report["smollm2"]["generated"] == 0 and report["gemma3"]["generated"] == 0
    assert len(cache_lines(first) + cache_lines(tmp_path / "cache" / "gemma3.jsonl")) == 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_backend_against_a_real_llama_cpp_server(tmp_path):
    from distill.config import TeacherConfig
    from distill.data import load_dataset
    from distill.models import resolve_gguf
    from distill.prompts import teacher_prompt
    from distill.teachers import OpenAITeacher

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_gguf("smollm2-135m-instruct")),
                               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "llama_cpp.server did not start"
                time.sleep(0.5)
        exs = load_dataset("demo").split("test")[:4]
        t = OpenAITeacher(TeacherConfig(name="srv", backend="openai", model="smollm2", base_url=url, max_new_tokens=48,
                                        concurrency=2, timeout_s=120))
        got = dict(t.generate([teacher_prompt(e, []) for e in exs]))
        assert sorted(got) == [0, 1, 2, 3]
        assert all(g.text.strip() and g.completion_tokens > 0 for g in got.values())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_gguf_tokenizer_rebuild_matches_llama_cpp():
    import llama_cpp

    from distill.models import resolve_gguf, tokenizer_from_gguf

    strings = ["The capital of France is Paris.", "Hello world!  123 4567 it's", "  leading\n\nand\ttabs",
               "<|im_start|>user\nWhy?<|im_end|>\n", "naïve café — 東京 🙂"]
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        path = resolve_gguf(name)
        tok = tokenizer_from_gguf(path)
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
        for s in strings:
            assert tok(s)["input_ids"] == llm.tokenize(s.encode(), add_bos=add_bos, special=True), (name, s)
        llm.close()
