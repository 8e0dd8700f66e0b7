"""Rationale throughput per teacher backend, on the same model and the same prompts.

    .venv/bin/python benchmarks/teacher_throughput.py --questions 16 --max-new-tokens 64

Model: the packaged SmolLM2-135M-Instruct (Q4_1 GGUF for llama.cpp and the server; the same
weights converted to fp32 for transformers). Prompts: teacher-forcing CoT over the demo set's
first N training questions, k=2. Throughput = completion tokens / wall seconds for the whole set,
after one warm-up prompt. Greedy decoding everywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from distill.config import TeacherConfig
from distill.data import load_dataset
from distill.llama_runtime import cpu_model
from distill.models import resolve_gguf
from distill.prompts import DemoPicker, teacher_prompt
from distill.teachers import LlamaCppTeacher, OpenAITeacher, TransformersTeacher



def measure(teacher, prompts) -> dict:
    list(teacher.generate(prompts[:1]))  # warm-up
    start = time.perf_counter()
    gens = dict(teacher.generate(prompts))
    wall = time.perf_counter() - start
    tokens = sum(g.completion_tokens for g in gens.values())
    return {"prompts": len(prompts), "tokens": tokens, "seconds": round(wall, 2), "tokens_per_s": round(tokens / wall, 1)}


def start_server(threads: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_gguf("smollm2-135m-instruct")),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("llama_cpp.server did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="benchmarks/results/teacher_throughput.json")
    args = ap.parse_args()

    train = load_dataset("demo").split("train")
    picker = DemoPicker(train, 2, "random", 0)
    prompts = [teacher_prompt(ex, picker(ex)) for ex in train[: args.questions]]
    base = dict(name="smollm2", model="smollm2-135m-instruct", max_new_tokens=args.max_new_tokens)
    results = {}

    t = LlamaCppTeacher(TeacherConfig(backend="llama.cpp", **base), threads=args.threads)
    results["llama.cpp (in-process, Q4_1)"] = measure(t, prompts)
    t.close()

    for batch in (1, 4):
        t = TransformersTeacher(TeacherConfig(backend="transformers", concurrency=batch, **base), threads=args.threads)
        results[f"transformers (fp32, batch {batch})"] = measure(t, prompts)

    proc, url = start_server(args.threads)
    try:
        for conc in (1, 4):
            t = OpenAITeacher(TeacherConfig(backend="openai", base_url=url, concurrency=conc, timeout_s=600, **base))
            results[f"openai -> llama_cpp.server (Q4_1, concurrency {conc})"] = measure(t, prompts)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)

    report = {"command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "hardware": f"{cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
              "threads": args.threads, "results": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    width = max(map(len, results))
    print(f"{'backend':{width}s}  tok/s  tokens  seconds")
    for k, r in results.items():
        print(f"{k:{width}s}  {r['tokens_per_s']:5.1f}  {r['tokens']:6d}  {r['seconds']:7.1f}")


if __name__ == "__main__":
    main()
