"""tinyllm-bench: the accuracy/CI arithmetic on fixed predictions, and failure isolation.

Run: pytest tests/test_bench.py
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import percentile, score, wilson
from bench.worker import parse_teacher_answer

BIN = Path(sys.executable).parent


def test_wilson_interval_known_values():
    lo, hi = wilson(80, 100)
    assert lo == pytest.approx(0.7112, abs=1e-4) and hi == pytest.approx(0.8666, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 0.0)


def test_score_on_fixed_predictions():
    preds = [{"gold": g, "pred_option_match": p, "em": e, "pred_loglik": l, "total_s": t, "ttft_s": t / 2,
              "decode_tok_s": 10.0, "prompt_tok_s": 100.0}
             for g, p, e, l, t in [(0, 0, 1, 0, 1.0), (1, None, 0, 1, 2.0), (2, 2, 0, 0, 3.0), (3, 1, 0, 3, 4.0)]]
    s = score(preds)
    # the third answer names the gold option without being its exact text: option match, not EM
    assert s["n"] == 4 and s["accuracy_option_match"] == 0.5 and s["accuracy_em"] == 0.25
    assert s["accuracy_loglik"] == 0.75 and s["unanswered_option_match"] == 1
    assert s["ci95_option_match"] == pytest.approx(list(wilson(2, 4)))
    assert s["ci95_em"] == pytest.approx(list(wilson(1, 4)))
    assert "accuracy_em" not in score([{k: v for k, v in p.items() if k != "em"} for p in preds])  # teachers
    assert s["p50_s"] == 2.5 and s["p95_s"] == pytest.approx(3.85)
    assert percentile([5.0], 0.95) == 5.0


def test_teacher_answer_parsing():
    choices = ("oxygen", "carbon dioxide", "helium")
    assert parse_teacher_answer("Plants breathe it in. So the answer is (b).", choices) == 1
    assert parse_teacher_answer("Not oxygen; it is carbon dioxide", choices) == 1
    assert parse_teacher_answer("no idea", choices) is None


def test_crash_and_timeout_are_reported_while_others_finish(tmp_path, tiny_bpe_student, monkeypatch):
    """A student that answers, a teacher whose model file is missing (crash), and a teacher that never answers (timeout)."""
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Silent(BaseHTTPRequestHandler):
        def do_POST(self):
            import time

            time.sleep(60)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    student = tmp_path / "run" / "student"
    shutil.copytree(tiny_bpe_student, student)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf")
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(f"""output_dir: {tmp_path / 'run'}
data: {{name: demo}}
teachers:
  - {{name: broken, backend: llama.cpp, model: {broken}}}
  - {{name: silent, backend: openai, model: m, base_url: "http://127.0.0.1:{srv.server_address[1]}/v1", timeout_s: 100}}
bench: {{limit: 4, threads: 1, warmup: 0, timeout_s: 20}}
""")
    r = subprocess.run([str(BIN / "tinyllm-bench"), "-c", str(cfg), "--no-mlflow"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    srv.shutdown()
    # the bench did not do all it was asked: the report is written, and the exit code says so
    assert r.returncode == 1, r.stderr[-3000:]
    assert "error: 2 of 3 contestant(s) did not finish: teacher:broken (crashed" in r.stderr
    report = json.loads((tmp_path / "run" / "bench" / "report.json").read_text())
    status = {c["name"]: c["status"] for c in report["contestants"]}
    assert status["student-torch"] == "ok"
    assert status["teacher:broken"].startswith("crashed")
    assert status["teacher:silent"] == "timed out after 20s"
    student_row = next(c for c in report["contestants"] if c["name"] == "student-torch")
    preds = [json.loads(line) for line in Path(student_row["predictions"]).read_text().splitlines()]
    assert len(preds) == 4 and student_row["accuracy_loglik"] == sum(p["pred_loglik"] == p["gold"] for p in preds) / 4
    table = (tmp_path / "run" / "bench" / "report.md").read_text()
    assert "**timed out after 20s**" in table and "**crashed" in table
    assert (tmp_path / "run" / "bench" / "accuracy_vs_latency.png").stat().st_size > 1000


def test_torch_runner_greedy_matches_generate(tiny_bpe_student):
    """The bench's own greedy loop (prompt pass keeping only the last logits, then one token at a time
    over the cache) produces what transformers' greedy generate does."""
    import torch
    import transformers

    from distill.inference import HFRunner

    tok = transformers.AutoTokenizer.from_pretrained(tiny_bpe_student)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_bpe_student).eval()
    runner = HFRunner(model, tok)
    assert runner._last_logits_only == {"logits_to_keep": 1}
    prompt = "Question: which is a metal?\npredict: Answer:"
    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    expected = tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    timed = runner.answer(prompt, 8, [])
    assert timed.text == expected and timed.prompt_tokens == enc["input_ids"].shape[1]
    assert expected.strip()  # a random-init model still says something for the comparison to bite on


@pytest.fixture(scope="module")
def tiny_gguf(tiny_bpe_student, tmp_path_factory):
    from export.gguf import write_f16

    out = tmp_path_factory.mktemp("gguf") / "student-f16.gguf"
    write_f16(tiny_bpe_student, out)
    return out


def test_gguf_option_loglik_on_the_answering_context_matches_full_logits(tiny_gguf):
    """Option log-likelihood reuses the one llama.cpp context (prompt once, option tokens from its cache)
    and equals scoring every position of each option with a logits_all context."""
    import llama_cpp
    import numpy as np

    from distill.inference import LlamaCppRunner

    runner = LlamaCppRunner(str(tiny_gguf), 1)
    prompt, options = "Q: Which is a metal?\nAnswer Choices:\n(a) iron\n(b) wood\npredict: Answer:", ["iron", "wood",
                                                                                                     "a piece of wood"]
    before = runner.answer(prompt, 6, []).text
    got = runner.option_logprobs(prompt, options)
    assert runner.answer(prompt, 6, []).text == before  # scoring leaves answering as it was
    ref_llm = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=2048, n_threads=1, logits_all=True, verbose=False)
    p_ids = ref_llm.tokenize(prompt.encode(), add_bos=runner.add_bos, special=True)
    expected = []
    for opt in options:
        o_ids = ref_llm.tokenize((" " + opt).encode(), add_bos=False, special=False)
        ref_llm.reset()
        ref_llm.eval(p_ids + o_ids)
        logits = np.array(ref_llm.scores[len(p_ids) - 1: len(p_ids) + len(o_ids) - 1], dtype=np.float64)
        lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        expected.append(float(lp[np.arange(len(o_ids)), o_ids].mean()))
    ref_llm.close()
    runner.close()
    assert got == pytest.approx(expected, abs=1e-3)
    assert len({round(x, 3) for x in got}) == 3  # the options do differ, so the comparison bites


def test_a_gguf_worker_never_imports_torch(tiny_gguf, tmp_path):
    """The GGUF contestant's process holds llama.cpp only, so its peak memory is the runtime's own."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: demo}\nbench: {limit: 2, threads: 1, warmup: 0}\n")
    (tmp_path / "out").mkdir()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "student-gguf-f16", "kind": "student-gguf", "role": "student",
                                "path": str(tiny_gguf), "config": str(cfg), "out": str(tmp_path / "out"),
                                "prompt_format_dir": str(tmp_path)}))
    code = ("import sys, bench.worker as w; w.main(sys.argv[1]); "
            "print('torch imported:', 'torch' in sys.modules, 'distill.train' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch imported: False False" in r.stdout
    preds = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 2 and all("pred_loglik" in json.loads(p) for p in preds)


@pytest.mark.slow  # 30-70 s: in CI's slow suite, out of the default one (kept under ~10 min)
def test_t5_student_through_distill_export_and_bench(tmp_path):
    """An encoder-decoder (the paper's FLAN-T5 family) student: trained, exported to ONNX (optimum's seq2seq
    model), then benched as torch and ONNX; both answer, and the same way."""
    from conftest import make_tiny_student
    from distill.data import load_dataset
    from distill.prompts import render_question

    texts = [render_question(e) + " " + " ".join(e.choices) for e in load_dataset("demo").splits["train"]]
    t5 = make_tiny_student(tmp_path / "t5", texts + ["predict: Answer:"], arch="t5")
    cfg = tmp_path / "t5.yaml"
    cfg.write_text(f"""output_dir: {tmp_path / 'run'}
data: {{name: demo, max_train: 8, max_eval: 4}}
teachers: []
student: {{model: {t5}, architecture: seq2seq}}
train: {{batch_size: 4, max_steps: 2, lr: 1.0e-3, eval_method: loglik}}
bench: {{limit: 3, threads: 1, warmup: 0}}
""")

    def run(*cmd):
        r = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    run("tinyllm-distill", "run", str(cfg), "--no-mlflow")
    run("tinyllm-export", str(tmp_path / "run" / "student"), "--format", "onnx", "-c", str(cfg), "--no-mlflow",
        "export.parity_prompts=5")
    readme = (tmp_path / "run" / "exports" / "onnx-none" / "README.md").read_text()
    assert "ORTModelForSeq2SeqLM" in readme and "ORTModelForCausalLM" not in readme
    run("tinyllm-bench", "-c", str(cfg), "--contestants", "student-torch,student-onnx-none", "--no-mlflow")
    report = json.loads((tmp_path / "run" / "bench" / "report.json").read_text())
    status = {r["name"]: r["status"] for r in report["contestants"]}
    assert status == {"student-torch": "ok", "student-onnx-none": "ok"}
    preds = {name: [json.loads(line) for line in
                    (tmp_path / "run" / "bench" / "contestants" / name / "predictions.jsonl").read_text().splitlines()]
             for name in status}
    assert len(preds["student-torch"]) == 3
    assert [p["generated"] for p in preds["student-torch"]] == [p["generated"] for p in preds["student-onnx-none"]]
    assert [p["pred_loglik"] for p in preds["student-torch"]] == [p["pred_loglik"] for p in preds["student-onnx-none"]]


def test_t5_runner_greedy_matches_generate(tmp_path):
    import torch
    import transformers

    from distill.inference import HFRunner
    from conftest import make_tiny_student

    from distill.data import load_dataset
    from distill.prompts import render_question

    texts = [render_question(e) + " predict: Answer:" for e in load_dataset("demo").splits["train"]]
    t5 = make_tiny_student(tmp_path / "t5", texts, arch="t5")
    tok = transformers.AutoTokenizer.from_pretrained(t5)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(t5).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # larger weights than the default init, so it says words rather than <pad>
        for prm in model.parameters():
            prm.normal_(0, 0.5)
    prompt = "predict: " + render_question(load_dataset("demo").splits["test"][0]) + "\nAnswer:"
    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=6, do_sample=False)
    expected = tok.decode(ref[0], skip_special_tokens=True)
    assert HFRunner(model, tok).answer(prompt, 6, []).text == expected and expected.strip()


def test_two_exports_of_one_quant_get_distinct_contestant_names(tmp_path):
    """`--quant auto` may choose the quant a user also exported by name: both are benched, under two names."""
    from bench.run import discover
    from distill.config import Config

    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    (run / "student" / "config.json").write_text("{}")
    for folder, extra in (("gguf-auto", {"auto": {"chosen": "q4_0"}}), ("gguf-q4_0", {}), ("my-q4_0", {})):
        (run / "exports" / folder).mkdir(parents=True)
        (run / "exports" / folder / "student-q4_0.gguf").write_bytes(b"gguf")
        (run / "exports" / folder / "parity.json").write_text(
            json.dumps({"format": "gguf", "quant": "q4_0", "file": "student-q4_0.gguf", "passed": True, **extra}))
    names = [c["name"] for c in discover(Config(), run / "student")]
    assert names == ["student-torch", "student-gguf-auto-q4_0", "student-gguf-q4_0", "student-my-q4_0"]


def test_bench_refuses_what_the_real_run_would_refuse_before_any_work(tiny_bpe_student, tmp_path):
    """--dry-run runs the real run's checks; a wrong --student, an unknown contestant, a negative --limit and
    bench.device=cuda without CUDA are each one sentence with exit 2."""
    import shutil

    student = tmp_path / "run" / "student"
    shutil.copytree(tiny_bpe_student, student)
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\ndata: {{name: demo}}\nteachers: []\n")

    def bench(*args):
        return subprocess.run([str(BIN / "tinyllm-bench"), "-c", str(cfg), "--no-mlflow", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=300)

    r = bench("--dry-run")
    assert r.returncode == 0 and '"name": "student-torch"' in r.stdout, r.stderr
    cases = [(("--student", str(tmp_path / "missing"), "--dry-run"), "is not a student folder (no config.json)"),
             (("--contestants", "student-gguf-q8_0", "--dry-run"), "unknown contestant(s) student-gguf-q8_0; found: "
                                                                   "student-torch"),
             (("--limit", "-3"), "bench.limit (--limit) must be at least 1"),
             (("bench.device=cuda",), "bench.device=cuda, but torch sees no CUDA device")]
    import torch

    for args, msg in cases:
        if "bench.device=cuda" in args and torch.cuda.is_available():
            continue
        r = bench(*args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
    assert not (tmp_path / "run" / "bench").exists()  # nothing was run


def test_a_free_form_student_through_distill_export_and_bench(tmp_path):
    """Free-form numeric questions (GSM8K-style): trained with generation scored by the final number, option
    log-likelihood refused in one sentence, exported to GGUF with --quant auto on validation, benched as
    torch and GGUF: every record scored by EM of the final answer, none by options."""
    from conftest import make_tiny_bpe_student

    rows = {split: [{"id": f"{split}-{i}", "question": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1)}
                    for i in range(k)] for split, k in (("train", 8), ("valid", 6), ("test", 5))}
    data = tmp_path / "data"
    data.mkdir()
    for split, rs in rows.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    student = make_tiny_bpe_student(tmp_path / "s", [r["question"] + " " + r["answer"] for rs in rows.values()
                                                     for r in rs] + ["predict: Answer: 0123456789"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""output_dir: {tmp_path / 'run'}
data: {{name: jsonl, path: {data}, eval_split: valid}}
teachers: []
student: {{model: {student}}}
train: {{batch_size: 4, max_steps: 2, lr: 1.0e-3, eval_method: generate}}
export: {{parity_prompts: 3}}
bench: {{limit: 4, threads: 1, warmup: 0}}
""")

    def run(*cmd, code=0):
        r = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=900)
        assert r.returncode == code, r.stderr[-3000:]
        return r

    refused = run("tinyllm-distill", "run", str(cfg), "train.eval_method=both", "--no-mlflow", code=2)
    assert "Traceback" not in refused.stderr and "set train.eval_method=generate" in refused.stderr
    dry = run("tinyllm-distill", "run", str(cfg), "train.eval_method=loglik", "--dry-run", code=2)
    assert "set train.eval_method=generate" in dry.stderr  # the dry run refuses what the run would
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any step
    run("tinyllm-distill", "run", str(cfg), "--no-mlflow")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "accuracy_em" in summary and "accuracy_option_match" not in summary and "accuracy_loglik" not in summary
    r = run("tinyllm-export", str(tmp_path / "run" / "student"), "--format", "gguf", "--quant", "auto", "--max-drop",
            "100", "-c", str(cfg), "--no-mlflow")
    auto = json.loads((tmp_path / "run" / "exports" / "gguf-auto" / "parity.json").read_text())["auto"]
    assert auto["split"] == "jsonl/valid" and auto["questions"] == 6 and auto["chosen"]
    gguf = next((tmp_path / "run" / "exports" / "gguf-auto").glob("student-*.gguf"))
    run("tinyllm-bench", "-c", str(cfg), "--contestants", f"student-torch,student-gguf-auto-{auto['chosen']}", "--no-mlflow")
    report = json.loads((tmp_path / "run" / "bench" / "report.json").read_text())
    assert {r["name"]: r["status"] for r in report["contestants"]} == {
        "student-torch": "ok", f"student-gguf-auto-{auto['chosen']}": "ok"}
    for r in report["contestants"]:
        assert "accuracy_em" in r and "accuracy_option_match" not in r and "accuracy_loglik" not in r
        preds = [json.loads(x) for x in (tmp_path / "run" / "bench" / "contestants" / r["name"] /
                                          "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == 4 and all(p["target"] == str(2 * i + 1) for i, p in enumerate(preds))
    assert gguf.exists()


def test_free_form_answers_are_scored_by_their_final_number():
    from distill.data import Example
    from distill.student import answer_is_right, final_number

    ex = Example(id="g", question="q", target="1000")
    assert answer_is_right(" 1,000", ex) and answer_is_right("$1000.00", ex) and answer_is_right("it is 1000.", ex)
    assert not answer_is_right(" 100", ex) and not answer_is_right("", ex)
    assert not answer_is_right("1\n1000", ex)  # a student's answer is its first line
    assert answer_is_right("2 + 998 = 1000.\nSo the answer is 1000.", ex, first_line=False)  # a chain of thought
    assert final_number("about -3.50 degrees") == "-3.5" and final_number("none") is None
    assert answer_is_right("Paris", Example(id="t", question="q", target="Paris"))  # non-numeric free-form


def test_plot_labels_of_points_close_together_do_not_overlap():
    """The quick start's student-torch and student-onnx-none lie almost on one spot: the second label moves up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report import label_offsets

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_xscale("log")
    ax.set_xlim(0.01, 10)
    ax.set_ylim(0, 100)
    points = [(0.30, 40.0, "student-torch"), (0.31, 40.5, "student-onnx-none"), (3.0, 80.0, "teacher:gemma3")]
    dy = label_offsets(ax, points)
    plt.close(fig)
    assert dy[0] == 0 and dy[1] >= 11 and dy[2] == 0
