"""`tinyllm-bench`: find the contestants, run each in its own process, report what was measured."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.worker import LOADED
from distill import layout
from distill.config import Config, write_resolved
from distill.errors import UserError
from distill.progress import log


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and (f.suffix in (".safetensors", ".onnx", ".onnx_data", ".gguf") or f.name.endswith(".onnx.data")))


def discover(cfg: Config, student: Path | None) -> list[dict]:
    """Every form of the student (torch folder, exports beside it) and every model teacher."""
    from distill.models import resolve_gguf

    found = []
    if student and (student / "config.json").exists():
        found.append({"name": "student-torch", "kind": "student-torch", "role": "student", "runtime": "torch fp32",
                      "path": str(student), "size_bytes": _size(student)})
        exports = layout.run_of(student) / layout.EXPORTS
        for d in sorted(exports.glob("*")) if exports.exists() else []:
            parity = d / "parity.json"
            if not parity.exists():
                continue
            p = json.loads(parity.read_text())
            if p["format"] == "gguf":
                f, ad = d / p["file"], p.get("adapter")  # ad: export.adapter_rank's LoRA file, loaded with the base
                qat = p.get("qat", {}).get("questions")  # export.qat_questions: tuned under llama.cpp's rounding
                gptq = p.get("gptq", {}).get("questions")  # export.gptq_questions: rounded with error feedback
                from export.gguf import variant as gguf_variant

                tt = ",".join(f"{pat}={kind}" for pat, kind in p.get("tensor_types", {}).get("overrides", []))
                found.append({"name": f"student-gguf-{'auto-' if p.get('auto') else ''}"
                                      + gguf_variant(p["quant"], ad["rank"] if ad else 0, qat or 0, tt, gptq or 0),
                              "kind": "student-gguf", "role": "student",
                              "runtime": f"llama.cpp {p['quant']}" + (f" + rank-{ad['rank']} adapter" if ad else "")
                              + (f" with {tt}" if tt else "") + (" after a quantization-aware pass" if qat else "") + (" rounded by GPTQ" if gptq else ""),
                              "path": str(f), "lora": str(d / ad["file"]) if ad else None,
                              "size_bytes": f.stat().st_size + ((d / ad["file"]).stat().st_size if ad else 0),
                              "parity_passed": p["passed"]})
            elif p["format"] == "genai":
                weights = "fp32" if p["quant"] == "none" else p["quant"]
                found.append({"name": f"student-genai-{weights}", "kind": "student-genai", "role": "student",
                              "runtime": f"onnxruntime-genai {weights}", "path": str(d), "size_bytes": _size(d),
                              "parity_passed": p["passed"]})
            else:
                found.append({"name": f"student-onnx-{p['quant']}", "kind": "student-onnx", "role": "student",
                              "runtime": f"onnxruntime {'fp32' if p['quant'] == 'none' else p['quant']}", "path": str(d),
                              "size_bytes": _size(d), "parity_passed": p["passed"]})
            if any(c["name"] == found[-1]["name"] for c in found[:-1]):  # two folders holding one quant
                found[-1]["name"] = f"student-{d.name}"
    import dataclasses

    for t in cfg.teachers:
        if t.backend == "files":
            continue  # precomputed rationales are not a model that can answer
        size = None
        if t.backend == "llama.cpp":
            try:
                size = resolve_gguf(t.model).stat().st_size
            except UserError:
                size = None
        found.append({"name": f"teacher:{t.name}", "kind": "teacher", "role": "teacher", "runtime": f"{t.backend} {t.model}",
                      "teacher": dataclasses.asdict(t), "size_bytes": size})
    return found


def select(cfg: Config, student: Path | None) -> list[dict]:
    """The contestants asked for (bench.contestants, else all found), refused in one sentence before any work
    when a name is unknown or bench.device=cuda has no CUDA to run on."""
    contestants = discover(cfg, student)
    if cfg.bench.contestants:
        known = {c["name"] for c in contestants}
        unknown = [n for n in cfg.bench.contestants if n not in known]
        if unknown:
            raise UserError(f"unknown contestant(s) {', '.join(unknown)}; found: {', '.join(sorted(known)) or 'none'}.")
        contestants = [c for c in contestants if c["name"] in cfg.bench.contestants]
    if not contestants:
        raise UserError("no contestants: train a student (tinyllm-distill run) or configure teachers with a model "
                        "backend.")
    kinds = {c["kind"] for c in contestants}
    if cfg.bench.device == "cuda" and "student-torch" in kinds:
        import torch

        if not torch.cuda.is_available():
            raise UserError("bench.device=cuda, but torch sees no CUDA device on this host; use bench.device=cpu (the "
                            "default) or auto.")
    if cfg.bench.device == "cuda" and "student-onnx" in kinds:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise UserError("bench.device=cuda, but onnxruntime has no CUDAExecutionProvider here; use "
                            "bench.device=cpu or auto, or pip install onnxruntime-gpu on a GPU host.")
    return contestants


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    i = (len(xs) - 1) * q
    lo, hi = math.floor(i), math.ceil(i)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def score(preds: list[dict]) -> dict:
    """Accuracy (with 95% CI) and latency figures from per-question records."""
    n = len(preds)
    out = {"n": n}
    if preds and "em" in preds[0]:  # students: the paper's exact match
        k = sum(p["em"] for p in preds)
        out["accuracy_em"], out["ci95_em"] = k / n, list(wilson(k, n))
    for m in ("option_match", "loglik"):
        key = f"pred_{m}"
        if preds and key in preds[0]:
            k = sum(1 for p in preds if p[key] == p["gold"])
            lo, hi = wilson(k, n)
            out[f"accuracy_{m}"] = k / n if n else 0.0
            out[f"ci95_{m}"] = [lo, hi]
            out[f"unanswered_{m}"] = sum(1 for p in preds if p[key] is None)
    totals = [p["total_s"] for p in preds]
    out.update({"p50_s": percentile(totals, 0.5), "p95_s": percentile(totals, 0.95),
                "ttft_p50_s": percentile([p["ttft_s"] for p in preds], 0.5),
                "decode_tok_s_p50": percentile([p["decode_tok_s"] for p in preds if p["decode_tok_s"] > 0], 0.5),
                "prompt_tok_s_p50": percentile([p["prompt_tok_s"] for p in preds if p["prompt_tok_s"] > 0], 0.5)})
    return out


def run_contestant(c: dict, cfg_file: Path, out: Path, student: Path | None, timeout: float,
                   load_timeout: float = 1800.0) -> dict:
    cdir = out / "contestants" / c["name"].replace(":", "-")
    cdir.mkdir(parents=True, exist_ok=True)
    spec = {**c, "config": str(cfg_file), "out": str(cdir), "prompt_format_dir": str(student) if student else ""}
    (cdir / "spec.json").write_text(json.dumps(spec, indent=2))
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(c["threads"])}  # onnxruntime/torch honour it at start-up
    err_file = cdir / "stderr.log"
    with open(err_file, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.worker", str(cdir / "spec.json")], stderr=err,
                                stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent, env=env)
        shown, answering_since = 0, None
        while True:  # relay the worker's progress lines while it runs; everything else stays in stderr.log
            try:
                code = proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                code = None
            lines = err_file.read_text(errors="replace").splitlines()
            for line in lines[shown:]:
                if line.startswith("[bench "):
                    log("  " + line)
            shown = len(lines)
            if code is not None:
                status = "ok" if code == 0 else f"crashed (exit {code})"
                break
            now = time.perf_counter()
            if answering_since is None and (cdir / LOADED).exists():
                answering_since = now
            late = None
            if answering_since is None and now - start > load_timeout:
                late = f"timed out loading after {load_timeout:g}s"
            elif answering_since is not None and now - answering_since > timeout:
                late = f"timed out after {timeout:g}s"
            if late:
                proc.kill()
                proc.wait()
                status = late
                break
    result = {**{k: v for k, v in c.items() if k != "teacher"}, "status": status, "wall_s": time.perf_counter() - start}
    preds_file = cdir / "predictions.jsonl"
    preds = [json.loads(line) for line in preds_file.read_text().splitlines()] if preds_file.exists() else []
    if status != "ok":
        tail = (cdir / "stderr.log").read_text().strip().splitlines()[-1:] or [""]
        result["error"] = tail[0][-300:]
        log(f"[bench] {c['name']}: {status}: {result['error']}")
        result["answered_before_failure"] = len(preds)
        return result
    result.update(score(preds))
    result.update(json.loads((cdir / "worker.json").read_text()))
    result["predictions"] = str(preds_file)
    return result


def bench(cfg: Config, student: Path | None, out: Path, track: bool = True) -> dict:
    from bench.report import write_report
    from distill.data import load_dataset

    out.mkdir(parents=True, exist_ok=True)
    cfg_file = write_resolved(cfg, out)
    contestants = select(cfg, student)
    ds = load_dataset(cfg.data.name, cfg.data.path)
    questions = ds.split(cfg.data.test_split)[: cfg.bench.limit]
    n_questions = len(questions)
    log(f"[bench] {len(contestants)} contestant(s) on {n_questions} questions of {ds.name}/{cfg.data.test_split}, "
        f"{cfg.bench.threads} threads, {cfg.bench.warmup} warm-up question(s)")
    from distill.tracking import mlflow_run

    # The MLflow run spans the bench itself, so the UI shows how long it took.
    with mlflow_run(cfg, "bench", run_name=f"bench-{ds.name}", tags=bench_tags(ds.name, student), enabled=track) as run:
        run.log_dataset(ds, cfg.data.test_split, questions, "evaluation")
        results = []
        for c in contestants:
            c["threads"] = cfg.bench.threads
            log(f"[bench] {c['name']} ({c['runtime']})")
            results.append(run_contestant(c, cfg_file, out, student, cfg.bench.timeout_s, cfg.bench.load_timeout_s))
        meta = {"dataset": ds.name, "split": cfg.data.test_split, "questions": n_questions, "threads": cfg.bench.threads,
                "warmup": cfg.bench.warmup, "hardware": hardware(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "method": ("Each contestant runs in its own process with a fixed thread count; after warm-up "
                           "questions (not timed), every test question is answered once, greedily, and timed: latency "
                           "figures are medians/p95 over those timed questions. Students answer with their answer prefix: "
                           "EM (the paper's metric) counts an answer whose first line is the gold option's text, option "
                           "match one that names the gold option (its text, a leading '(b)' or a prefix). Teachers "
                           "answer zero-shot chain-of-thought, parsed for 'the answer is (x)' or the option they name "
                           "last: option match only. Log-likelihood accuracy scores each option's mean token log-prob.")}
        report = write_report(results, meta, out)
        log_bench_metrics(run, report, out)
    return report


def hardware() -> str:
    from distill.llama_runtime import cpu_model

    return f"{cpu_model()}; {os.cpu_count()} logical cores; {platform.system()} {platform.release()}"


def bench_tags(dataset: str, student: Path | None) -> dict:
    tags = {"tinyllm.dataset": dataset}
    summary = layout.run_of(student) / layout.SUMMARY if student else None
    if summary and summary.exists():
        run_id = json.loads(summary.read_text()).get("run_id")
        if run_id:
            tags["tinyllm.distill_run_id"] = run_id
    return tags


def log_bench_metrics(run, report: dict, out: Path) -> None:
    for r in report["contestants"]:
        key = r["name"].replace(":", "_")
        metrics = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k in ("accuracy_em", "accuracy_option_match", "accuracy_loglik", "p50_s", "p95_s", "ttft_p50_s", "decode_tok_s_p50",
                             "prompt_tok_s_p50", "peak_rss_mb", "size_bytes", "speedup_vs_largest_teacher")}
        run.log_metrics({f"{key}.{k}": v for k, v in metrics.items() if not math.isnan(v)})
        run.set_tags({f"tinyllm.bench.{key}.status": r["status"]})
    run.log_artifacts(str(out), "bench")
