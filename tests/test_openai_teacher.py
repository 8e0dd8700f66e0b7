"""The `openai` backend against real HTTP servers on 127.0.0.1, and a generate run killed with SIGKILL.

The servers here speak the OpenAI chat-completions wire format and answer with the gold answer they
were shown; tests/test_slow_teachers.py runs the same backend against a real llama_cpp.server.
Run: pytest tests/test_openai_teacher.py
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from distill.config import TeacherConfig
from distill.errors import UserError
from distill.prompts import teacher_prompt
from distill.data import Example
from distill.teachers import OpenAITeacher


class FakeServer:
    """`fail_first`: answer HTTP 500 to that many requests; `hang_after`: never answer after that many
    successes; `delay`: seconds per answer; `gather`: hold every answer until that many requests are in
    flight at once (so concurrency is seen, not timed); `hold_after`: answer that many, then hold the rest
    until `release` is set. Records every Authorization header it sees and the most requests in flight."""

    def __init__(self, fail_first=0, hang_after=None, delay=0.0, gather=None, hold_after=None):
        self.fail_first, self.hang_after, self.delay = fail_first, hang_after, delay
        self.gather, self.hold_after = gather, hold_after
        self.requests = self.answered = self.in_flight = self.max_in_flight = 0
        self.auth = []
        self.lock = threading.Lock()
        self.gathered, self.release, self.closing = threading.Event(), threading.Event(), threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    server.auth.append(self.headers.get("Authorization"))
                    fail = server.requests <= server.fail_first
                    hang = server.hang_after is not None and server.answered >= server.hang_after
                    hold = server.hold_after is not None and server.answered >= server.hold_after
                    if not fail and not hang:
                        server.answered += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    if server.gather and server.in_flight >= server.gather:
                        server.gathered.set()
                try:
                    self.answer(body, fail, hang, hold)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def answer(self, body, fail, hang, hold):
                if fail:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"overloaded")
                    return
                if hang:
                    server.closing.wait()
                    return
                if server.gather:
                    server.gathered.wait(timeout=60)  # a client that is not concurrent never gathers them
                if hold:
                    server.release.wait()
                time.sleep(server.delay)
                prompt = body["messages"][-1]["content"]
                answer = prompt.rsplit("Correct answer: ", 1)[1].split("\n")[0]
                out = {"choices": [{"message": {"role": "assistant", "content": f"Known fact. So the answer is {answer}."},
                                    "finish_reason": "stop"}], "usage": {"completion_tokens": 7}}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.closing.set()
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    made = []

    def make(**kw):
        made.append(FakeServer(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


EXS = [Example(f"e{i}", f"question {i}", ("x", "y"), i % 2) for i in range(4)]


def teacher(url, **kw):
    return OpenAITeacher(TeacherConfig(name="remote", backend="openai", model="m", base_url=url, **kw))


def test_retries_500_then_succeeds(server_factory, monkeypatch):
    monkeypatch.setattr(OpenAITeacher, "RETRIES", 3)
    srv = server_factory(fail_first=2)
    got = dict(teacher(srv.url, concurrency=1).generate([teacher_prompt(EXS[1], [])]))
    assert got[0].text == "Known fact. So the answer is (b) y." and got[0].completion_tokens == 7
    assert srv.requests == 3


def test_gives_up_after_retries_with_a_clear_error(server_factory, monkeypatch):
    monkeypatch.setattr(OpenAITeacher, "RETRIES", 1)
    srv = server_factory(fail_first=99)
    with pytest.raises(UserError, match=r"answered HTTP 500 \(overloaded\)"):
        list(teacher(srv.url).generate([teacher_prompt(EXS[0], [])]))
    assert srv.requests == 2


def test_silent_server_times_out_and_keeps_what_was_received(server_factory, monkeypatch):
    monkeypatch.setattr(OpenAITeacher, "RETRIES", 1)  # a timeout is retried like a 5xx: two tries of 1 s here
    srv = server_factory(hang_after=2)
    received = []
    with pytest.raises(UserError, match=r"gave no answer within 1s \(2 tries; .*already received are saved"):
        for i, gen in teacher(srv.url, concurrency=1, timeout_s=1.0).generate([teacher_prompt(e, []) for e in EXS]):
            received.append(i)
    assert received == [0, 1]  # the message above is the client's own timeout: the server never answered


def test_api_key_comes_from_the_environment_only(server_factory, monkeypatch):
    srv = server_factory()
    with pytest.raises(UserError, match="TEACHER_KEY"):
        teacher(srv.url, api_key_env="TEACHER_KEY")
    monkeypatch.setenv("TEACHER_KEY", "sk-secret")
    list(teacher(srv.url, api_key_env="TEACHER_KEY").generate([teacher_prompt(EXS[0], [])]))
    assert srv.auth == ["Bearer sk-secret"]


def test_concurrency_overlaps_requests(server_factory):
    srv = server_factory(gather=4)  # every answer waits until four requests are in flight together
    prompts = [teacher_prompt(e, []) for e in EXS]
    got = dict(teacher(srv.url, concurrency=4).generate(prompts))
    assert sorted(got) == [0, 1, 2, 3]
    assert srv.max_in_flight == 4 and srv.gathered.is_set()


def test_sigkill_mid_run_then_rerun_gives_every_record_once(server_factory, tmp_path):
    srv = server_factory(hold_after=15)  # the 16th request on waits: the kill lands part-way, however loaded
    (tmp_path / "c.yaml").write_text(f"""
output_dir: {tmp_path}/out
data: {{name: demo, max_train: 60}}
rationales: {{cache_dir: {tmp_path}/cache, k_shot: 1}}
teachers:
  - {{name: remote, backend: openai, model: m, base_url: "{srv.url}", concurrency: 2}}
""")
    cmd = [str(Path(sys.executable).parent / "tinyllm-distill"), "generate", str(tmp_path / "c.yaml"), "--no-mlflow"]
    cache = tmp_path / "cache" / "remote.jsonl"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and (not cache.exists() or len(cache.read_text().splitlines()) < 15):
        time.sleep(0.02)  # polls the cache file the run appends to; the held requests keep the run alive
    assert proc.poll() is None, "the run ended before its 15 answered requests were cached"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    srv.release.set()
    before = len([line for line in cache.read_text().splitlines() if line.strip()])
    assert before == 15, "the kill lands while requests 16 and 17 are held"
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(records) == 60 and len({r["key"] for r in records}) == 60
    report = json.loads(r.stdout)
    assert report["remote"]["generated"] == 60 - report["remote"]["cached"]
    assert report["remote"]["cached"] >= before - 1  # at most a partial line was lost


def test_retry_after_is_honoured(server_factory, monkeypatch):
    """A 429 with Retry-After: the client waits at least that long before the next try."""
    monkeypatch.setattr(OpenAITeacher, "RETRIES", 2)
    srv = server_factory()
    calls = []

    class Busy(srv.httpd.RequestHandlerClass):
        def do_POST(self):
            calls.append(time.perf_counter())
            if len(calls) == 1:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(429)
                self.send_header("Retry-After", "2")
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"busy")
                return
            super().do_POST()

    srv.httpd.RequestHandlerClass = Busy
    got = dict(teacher(srv.url, concurrency=1).generate([teacher_prompt(EXS[1], [])]))
    assert got[0].text.endswith("(b) y.") and len(calls) == 2
    assert calls[1] - calls[0] >= 1.9  # the server asked for 2 s; the client's own backoff would start at 0.5 s


def test_bench_measures_time_to_first_token_by_streaming():
    """The bench's openai runner streams: the first token's time is when it arrived, not the total."""
    import threading

    from bench.runners import OpenAIRunner

    release = threading.Event()

    class Streamer(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body["stream"] is True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()

            def send(piece):
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            send("The answer")
            release.wait(timeout=60)  # a slow model: the rest comes once the client has its first token
            for piece in (" is", " (b)."):
                send(piece)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Streamer)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        runner = OpenAIRunner(TeacherConfig(name="t", backend="openai", model="m",
                                            base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1"))
        request = runner.teacher.request

        def first_chunk_then_release(*a, **kw):  # the runner has timed its first token when it asks again
            for i, chunk in enumerate(request(*a, **kw)):
                yield chunk
                if i == 0:
                    release.set()

        runner.teacher.request = first_chunk_then_release
        timed = runner.answer("Q?", 16, [])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert timed.text == "The answer is (b)." and timed.new_tokens == 3
    assert release.is_set() and timed.ttft_s < timed.total_s  # timed at the first token, not at the end


def test_dry_run_counts_what_the_rationale_cache_already_holds(server_factory, tmp_path):
    """`run --dry-run` used to plan every rationale as to be generated, even when all were cached."""
    srv = server_factory()
    (tmp_path / "c.yaml").write_text(f"""
output_dir: {tmp_path}/out
data: {{name: demo, max_train: 6}}
rationales: {{cache_dir: {tmp_path}/cache, k_shot: 1}}
teachers:
  - {{name: remote, backend: openai, model: m, base_url: "{srv.url}"}}
""")
    distill = str(Path(sys.executable).parent / "tinyllm-distill")

    def planned() -> dict:
        r = subprocess.run([distill, "run", str(tmp_path / "c.yaml"), "--dry-run"], capture_output=True, text=True,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.split("# plan", 1)[1])

    assert planned()["rationales_to_generate"] == 6 and planned()["rationales_cached"] == {"remote": 0}
    r = subprocess.run([distill, "generate", str(tmp_path / "c.yaml"), "data.max_train=4", "--no-mlflow"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = planned()
    assert plan["rationales_cached"] == {"remote": 4} and plan["rationales_to_generate"] == 2
