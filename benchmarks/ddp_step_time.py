"""Two-process data-parallel training on CPU: step time with DistributedDataParallel against the
hand-written per-parameter all_reduce it replaced (or any other checkout).

    .venv/bin/python benchmarks/ddp_step_time.py --label ddp
    .venv/bin/python benchmarks/ddp_step_time.py --label manual-all-reduce --code /path/to/old/checkout

Both run `torchrun --nproc_per_node 2 tinyllm-distill run` on the same OBQA questions with the paper's
released rationales (TinyLLM, two teachers), the packaged SmolLM2-135M student, batch 8, one thread
per process (torchrun's default), no MLflow and no evaluation, from `--code` (put first on PYTHONPATH).
Reported: the median per-step training throughput over steps 2..N (each step's tokens over its wall
time, as the trainer's step line prints it with log_every=1) and the wall time of the whole command.
The same questions in the same order make the tokens per step identical, so the throughput ratio is
the inverse step-time ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill.llama_runtime import cpu_model

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--code", default=str(REPO), help="Checkout whose distill/ runs (default: this one).")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ddp_step_time.json"))
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="tinyllm-ddp-"))
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
           "--no-python", str(BIN / "tinyllm-distill"), "run", str(REPO / "configs/paper/obqa.yaml"),
           "student.model=smollm2-135m-instruct", "student.architecture=auto", "student.task_position=after",
           "train.batch_size=8", f"train.max_steps={args.steps}", "train.log_every=1", f"data.max_train={8 * args.steps}",
           "data.max_eval=0", f"output_dir={work / 'out'}", f"rationales.cache_dir={work / 'cache'}", "--no-mlflow"]
    env = {**os.environ, "PYTHONPATH": args.code}
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    lines = re.findall(r"step 0*(\d+)/\d+ .*?\| (\d+) tok/s", r.stderr)
    per_step = [float(rate) for step, rate in lines if int(step) >= 2]
    result = {"label": args.label, "code": args.code, "steps": args.steps, "processes": 2,
              "median_tokens_per_s_steps_2_to_n": statistics.median(per_step), "tokens_per_s_per_step": per_step,
              "wall_s": round(wall, 1), "command": " ".join(cmd[:1] + ["--nproc_per_node", "2", "..."] + cmd[9:]),
              "hardware": f"{cpu_model()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc[args.label] = result
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
