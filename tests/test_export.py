"""tinyllm-export on a tiny random-init llama student with a byte-level BPE tokenizer.

Run: pytest tests/test_export.py
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent


def export(*args, cwd):
    return subprocess.run([str(BIN / "tinyllm-export"), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_gguf_f16_passes_parity_and_is_self_contained(tiny_bpe_student, tmp_path):
    r = export(str(tiny_bpe_student), "--format", "gguf", "--quant", "f16", "--out", str(tmp_path / "g"), "--no-mlflow",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "g" / "parity.json").read_text())
    assert report["passed"] and report["tokenizer_round_trip"] and report["max_abs_logit_diff"] < 0.5
    assert report["prompts"] == 50 and report["positions"] > 1000 and report["top1_agreement"] >= 0.99
    readme = (tmp_path / "g" / "README.md").read_text()
    assert "llama-cli -m student-f16.gguf" in readme and "predict:" in readme

    import gguf

    fields = gguf.GGUFReader(str(tmp_path / "g" / "student-f16.gguf")).fields
    assert "predict:" in fields["tokenizer.chat_template"].contents()
    assert json.loads(fields["tinyllm.prompt_format"].contents())["answer_prefix"] == "predict:"

    # It loads and generates in llama.cpp, greedily the same first tokens as torch.
    import llama_cpp
    import torch
    import transformers

    prompt = "predict: Q: What do plants need from sunlight?\nAnswer:"
    llm = llama_cpp.Llama(model_path=str(tmp_path / "g" / "student-f16.gguf"), n_ctx=256, verbose=False)
    out = llm.create_completion(prompt, max_tokens=5, temperature=0.0)
    llm.close()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_bpe_student)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_bpe_student)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out["choices"][0]["text"] and out["choices"][0]["text"] == tok.decode(ref[0, ids.shape[1]:])


def test_gguf_quantized_thresholds_decide_and_failures_keep_files(tiny_bpe_student, tmp_path):
    # A random-init model's weights are all noise, which 4-bit quantization hurts far more than trained
    # weights: with the default thresholds the export must fail, say why, and keep the files.
    r = export(str(tiny_bpe_student), "--format", "gguf", "--quant", "q4_k_m", "--out", str(tmp_path / "q4"), "--no-mlflow",
               cwd=tmp_path)
    assert r.returncode == 1
    assert "parity check failed (" in r.stderr and "top1_agreement >= 0.8" in r.stderr and "kept in" in r.stderr
    assert (tmp_path / "q4" / "student-q4_k_m.gguf").exists() and (tmp_path / "q4" / "parity.json").exists()
    r = export(str(tiny_bpe_student), "--format", "gguf", "--quant", "q8_0", "--out", str(tmp_path / "q8"), "--no-mlflow",
               "export.min_top1_agreement.q8_0=0.8", "export.max_mean_kl.q8_0=0.1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "q8" / "parity.json").read_text())
    q4 = json.loads((tmp_path / "q4" / "parity.json").read_text())
    # The report tells what each quantization costs: 8-bit is much closer to torch than 4-bit.
    assert report["mean_kl"] < q4["mean_kl"] / 5 and report["top1_agreement"] > q4["top1_agreement"]


def test_unsupported_architecture_is_refused_in_one_sentence(tiny_student, tmp_path):
    from distill.errors import UserError
    from export.gguf import check_supported

    with pytest.raises(UserError, match=r"GGUF export supports LlamaForCausalLM, Qwen2ForCausalLM, Gemma3ForCausalLM students; this one is T5"):
        check_supported({"architectures": ["T5ForConditionalGeneration"]})
    r = export(str(tmp_path / "nowhere"), "--format", "gguf", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert r.returncode == 2 and "is not a student folder" in r.stderr and "Traceback" not in r.stderr


def test_onnx_export_matches_torch(tiny_bpe_student, tmp_path):
    r = export(str(tiny_bpe_student), "--format", "onnx", "--out", str(tmp_path / "o"), "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "o" / "parity.json").read_text())
    assert report["passed"] and report["max_abs_logit_diff"] < 1e-2 and report["tokenizer_round_trip"]
    assert (tmp_path / "o" / "tokenizer.json").exists() and (tmp_path / "o" / "prompt_format.json").exists()
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "o")
    ort = ORTModelForCausalLM.from_pretrained(tmp_path / "o")
    ids = tok("predict: Q: Which is a star?\nAnswer:", return_tensors="pt")
    generated = ort.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated.shape[1] > ids["input_ids"].shape[1]  # it loads and generates in onnxruntime


def test_t5_student_exports_to_onnx_and_generates_like_torch(tmp_path):
    from conftest import make_tiny_student
    from distill.data import load_dataset
    from distill.prompts import render_question

    texts = [render_question(e) + " predict: Answer:" for e in load_dataset("demo").splits["train"]]
    t5 = make_tiny_student(tmp_path / "t5", texts, arch="t5")
    r = export(str(t5), "--format", "onnx", "--out", str(tmp_path / "o"), "--no-mlflow", "export.parity_prompts=20",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "o" / "parity.json").read_text())
    assert report["prompts"] == 20 and report["generation_match"] == 1.0 and report["passed"]
    assert report["task"] == "text2text-generation-with-past"


def test_bad_inputs_get_one_sentence_and_leave_nothing_complete_looking(tiny_bpe_student, tmp_path):
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    r = export(str(empty), "--format", "gguf", "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert r.returncode == 2 and "has no *.safetensors weights" in r.stderr

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_bpe_student, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00\x01garbage")
    r = export(str(corrupt), "--format", "gguf", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert r.returncode == 2 and "is not a readable safetensors file" in r.stderr and "Traceback" not in r.stderr

    r = export(str(tiny_bpe_student), "--format", "gguf", "--quant", "q3_weird", "--out", str(tmp_path / "c"), cwd=tmp_path)
    assert r.returncode == 2 and "--quant q3_weird is not a GGUF option; use one of f16, q8_0, q6_k, q5_k_m, q5_0, q4_k_m, q4_1, q4_0, or auto." in r.stderr
    r = export(str(tiny_bpe_student), "--format", "onnx", "--quant", "q4_k_m", "--out", str(tmp_path / "c"), cwd=tmp_path)
    assert r.returncode == 2 and "is not an ONNX option" in r.stderr

    (tmp_path / "taken").mkdir()
    r = export(str(tiny_bpe_student), "--format", "gguf", "--quant", "f16", "--out", str(tmp_path / "taken"), cwd=tmp_path)
    assert r.returncode == 2 and "already exists; pass --overwrite" in r.stderr
    r = export(str(tiny_bpe_student), "--format", "gguf", "--quant", "f16", "--out", str(tmp_path / "taken"), "--overwrite",
               "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "taken" / "parity.json").exists()
    assert not list(tmp_path.glob("*.partial")), "no half-written folder remains"
    for name in ("a", "b", "c"):
        assert not (tmp_path / name).exists()


@pytest.mark.slow  # 30-70 s: in CI's slow suite, out of the default one (kept under ~10 min)
def test_export_by_run_id_logs_to_that_run(tmp_path, tiny_bpe_student):
    import mlflow

    from test_train import run_cli, write_run_config

    cfg = write_run_config(tmp_path, tiny_bpe_student, teachers=("a",), max_steps=1)
    summary = json.loads(run_cli("run", str(cfg), cwd=tmp_path).stdout)
    r = export("--run", summary["run_id"], "--format", "gguf", "--quant", "q8_0", "--out", str(tmp_path / "g"),
               "-c", str(cfg), "export.min_top1_agreement.q8_0=0.5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.get_run(summary["run_id"])
    assert "export.gguf-q8_0.top1_agreement" in run.data.metrics
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(summary["run_id"], "exports/gguf-q8_0")}
    assert {"exports/gguf-q8_0/student-q8_0.gguf", "exports/gguf-q8_0/parity.json"} <= files
    # Without -c, the student's own run says what it was trained on: parity runs on its data, not the defaults'.
    r = export("--run", summary["run_id"], "--format", "gguf", "--quant", "f16", "--out", str(tmp_path / "g2"),
               f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "g2" / "parity.json").read_text())["prompt_source"] == "demo/test"
    assert "name: demo" in (tmp_path / "g2" / "resolved_config.yaml").read_text()


def test_onnx_int8_is_weight_only_and_close_to_torch(tiny_bpe_student, tmp_path):
    r = export(str(tiny_bpe_student), "--format", "onnx", "--quant", "int8", "--out", str(tmp_path / "q"), "--no-mlflow",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "q" / "parity.json").read_text())
    assert report["passed"] and report["top1_agreement"] >= 0.8
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops and "DynamicQuantizeLinear" not in ops  # weights int8, no per-tensor activations


def test_onnx_int4_is_matmulnbits_at_4_bits_with_int8_compute(tiny_bpe_student, tmp_path):
    """4 bits cost this random tiny student (matrices drawn at std 0.25, decisive logits) as much as GGUF q4_0
    does (top-1 0.27 both, 50 prompts, when this was written), so the thresholds are lifted here; the
    conversion is held to far above chance (1/512) and to the graph it must be."""
    r = export(str(tiny_bpe_student), "--format", "onnx", "--quant", "int4", "--out", str(tmp_path / "q"), "--no-mlflow",
               "export.parity_prompts=10", "export.min_top1_agreement.int4=0", "export.max_mean_kl.int4=1e9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "q" / "parity.json").read_text())
    assert report["passed"] and report["quant"] == "int4" and report["tokenizer_round_trip"]
    assert report["top1_agreement"] > 0.15
    import onnx

    graph = onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nbits]
    assert nbits and all(a["bits"] == 4 and a["block_size"] == 32 and a["accuracy_level"] == 4 for a in attrs)


def student_with_validation_data(tiny_bpe_student, tmp_path) -> Path:
    """A student folder inside a run whose resolved config names a dataset with a validation split."""
    import shutil

    from test_epochs import write_split_data

    write_split_data(tmp_path / "data")
    shutil.copytree(tiny_bpe_student, tmp_path / "run" / "student")
    (tmp_path / "run" / "resolved_config.yaml").write_text(f"data: {{name: jsonl, path: {tmp_path / 'data'}}}\n")
    return tmp_path / "run" / "student"


def test_quant_auto_keeps_the_smallest_candidate_within_the_budget(tiny_bpe_student, tmp_path):
    from export.auto import pick, prediction_bound

    student = student_with_validation_data(tiny_bpe_student, tmp_path)
    # 8 validation questions certify nothing below ~50 points (floor_bound): the budget is sized to them.
    r = export(str(student), "--format", "gguf", "--quant", "auto", "--max-drop", "100", "--no-mlflow",
               "export.parity_prompts=5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "run" / "exports" / "gguf-auto"
    report = json.loads((out / "parity.json").read_text())
    auto = report["auto"]
    assert auto["split"] == "jsonl/valid" and auto["questions"] == 8  # chosen on validation, never on test
    names = [c["name"] for c in auto["candidates"]]
    assert sorted(names) == sorted(["q4_0", "q4_0-e8", "q4_1", "q4_k_m", "q4_k_m-e8", "q5_k_m", "q5_k_m-e8", "q6_k",
                                    "q6_k-e8", "q8_0"])
    sizes = [c["size_bytes"] for c in auto["candidates"]]
    assert sizes == sorted(sizes)  # tried from the smallest up
    by_name = {c["name"]: c for c in auto["candidates"]}
    twins = [c for c in auto["candidates"] if c.get("same_file_as")]
    for c in twins:  # a byte-identical file is scored once
        base = by_name[c["same_file_as"]]
        assert (c["size_bytes"], c["em"], c["agreement"]) == (base["size_bytes"], base["em"], base["agreement"])
    assert r.stderr.count(" MB, EM ") == 10 - len(twins) and r.stderr.count("its measurements reused") == len(twins)
    torch_correct = [x == "1" for x in auto["torch_correct"]]
    assert len(torch_correct) == 8 and auto["distinct_candidates"] == 10 - len(twins)
    for c in auto["candidates"]:  # the corrected prediction bound, not the point estimate, decides
        correct = [x == "1" for x in c["correct"]]  # kept per question, so another rule can be judged later
        assert len(correct) == 8 and len(c["same_answer"]) == 8
        assert c["lost"] - c["gained"] == sum(torch_correct) - sum(correct)
        assert c["drop_bound"] == round(prediction_bound(torch_correct, correct, auto["distinct_candidates"]), 2)
        assert c["drop_bound"] > c["drop_upper95"] >= c["drop_points"] and c["within_budget"] == (c["drop_bound"] <= 100)
    fits = [c for c in auto["candidates"] if c["within_budget"]]
    assert auto["chosen"] == fits[0]["name"] == report["quant"] == pick(auto["candidates"], 100)["name"]
    assert auto["smallest_certifiable_drop"] == min(c["drop_bound"] for c in auto["candidates"])
    assert [f.name for f in out.glob("*.gguf")] == [f"student-{auto['chosen']}.gguf"]  # the others are not kept
    assert "--quant auto" in (out / "README.md").read_text()


def test_quant_auto_refuses_in_one_sentence_when_nothing_fits(tiny_bpe_student, tmp_path):
    student = student_with_validation_data(tiny_bpe_student, tmp_path)
    # A budget no candidate can meet: it would have to beat the torch student by 200 points.
    r = export(str(student), "--format", "gguf", "--quant", "auto", "--max-drop", "-200", "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 1 and "no GGUF candidate is certified within -200 point(s)" in r.stderr
    assert "Traceback" not in r.stderr and "the tightest any candidate reached" in r.stderr
    kept = json.loads((tmp_path / "run" / "exports" / "gguf-auto" / "auto.json").read_text())
    assert len(kept["candidates"]) == 10 and kept["chosen"] is None
    assert not list((tmp_path / "run" / "exports" / "gguf-auto").glob("*.gguf"))


def test_quant_auto_needs_a_validation_split(tiny_bpe_student, tmp_path):
    import shutil

    shutil.copytree(tiny_bpe_student, tmp_path / "run" / "student")
    (tmp_path / "run" / "resolved_config.yaml").write_text("data: {name: demo, eval_split: test}\n")
    r = export(str(tmp_path / "run" / "student"), "--format", "gguf", "--quant", "auto", "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2 and "--quant auto chooses on a validation split, and demo has none" in r.stderr
    assert not list((tmp_path / "run").glob("exports/*"))  # refused before any work


def test_export_prints_only_its_own_lines_unless_verbose(tiny_bpe_student, tmp_path):
    r = export(str(tiny_bpe_student), "--format", "onnx", "--out", str(tmp_path / "quiet"), "--no-mlflow",
               "export.parity_prompts=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.strip() and all(line.startswith("[") for line in r.stderr.strip().splitlines()), r.stderr
    assert "TracerWarning" in (tmp_path / "quiet" / "export.log").read_text()  # kept, where it can be read
    r = export(str(tiny_bpe_student), "--format", "onnx", "--out", str(tmp_path / "loud"), "--no-mlflow",
               "export.parity_prompts=3", "--verbose", cwd=tmp_path)
    assert r.returncode == 0 and "TracerWarning" in r.stderr and not (tmp_path / "loud" / "export.log").exists()


@pytest.mark.slow
def test_packaged_gemma3_student_round_trips_through_gguf(tmp_path):
    """The packaged Gemma 3 270M as a student folder -> tinyllm-export GGUF f16 -> llama.cpp: the same token
    ids and top-1 agreement >= 0.99 with torch (norms +1, SentencePiece vocabulary, no q/k permutation)."""
    import shutil

    from distill.models import cache_root, load_causal_lm

    load_causal_lm("gemma3-270m")  # converts once into the cache (about 90 s)
    folder = next(d for d in (cache_root() / "hf").iterdir() if d.name.startswith("gemma-3-270m"))
    shutil.copytree(folder, tmp_path / "run" / "student")
    r = export(str(tmp_path / "run" / "student"), "--format", "gguf", "--quant", "f16", "--no-mlflow",
               "export.parity_prompts=12", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "exports" / "gguf-f16" / "parity.json").read_text())
    assert report["architecture"] == "gemma3" and report["tokenizer_round_trip"]
    assert report["top1_agreement"] >= 0.99 and report["passed"]


def test_gemma3_student_exports_to_gguf_with_its_sentencepiece_vocabulary(tmp_path):
    """A tiny Gemma 3 student: llama.cpp reads its GGUF with the same token ids and the same next-token
    choices as torch (without Gemma's +1 norm shift every top-1 differs: checked when this was written)."""
    from conftest import make_tiny_gemma3_student
    from distill.data import load_dataset
    from distill.prompts import render_question

    texts = [render_question(ex) for ex in load_dataset("demo").splits["train"]] + ["predict: Answer:"]
    student = make_tiny_gemma3_student(tmp_path / "run" / "student", texts)
    r = export(str(student), "--format", "gguf", "--quant", "f16", "--no-mlflow", "export.parity_prompts=10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "exports" / "gguf-f16" / "parity.json").read_text())
    assert report["architecture"] == "gemma3" and report["tokenizer_round_trip"] and report["top1_agreement"] >= 0.99


def test_quant_auto_scores_a_byte_identical_candidate_once(tmp_path, monkeypatch):
    """`-e8` on a model whose embeddings llama.cpp keeps at q8_0 anyway gives the very same file: it is
    listed with its twin's measurements, not scored again (the real quantizer and llama.cpp are
    replaced here: only the choosing is under test)."""
    from types import SimpleNamespace

    import export.gguf
    from distill.student import PromptFormat
    from export import auto

    sizes = {"q4_0": 10, "q4_1": 11, "q4_k_m": 12, "q5_k_m": 14, "q6_k": 16, "q8_0": 20}
    monkeypatch.setattr(export.gguf, "quantize", lambda src, dst, quant, **kw: dst.write_bytes(b"x" * sizes[quant]))
    monkeypatch.setattr(PromptFormat, "load", staticmethod(lambda student: PromptFormat()))
    examples = [SimpleNamespace(answer_text=t, choices=("a", "b", "c", "d")) for t in ("a", "b", "c", "d")]
    monkeypatch.setattr(auto, "torch_answers", lambda model, tok, fmt, ex: ["a", "b", "c", "d"])
    scored = []

    def answers(path, fmt, ex, task=""):
        scored.append(path.name)
        return ["a", "b", "c", "x"] if "q4_0" in path.name or "q4_1" in path.name else ["a", "b", "c", "d"]

    monkeypatch.setattr(auto, "gguf_answers", answers)
    report = auto.choose(tmp_path / "f16.gguf", tmp_path, tmp_path, None, None,
                         SimpleNamespace(export=SimpleNamespace(max_accuracy_drop=100.0)), (examples, "x/valid"))
    assert scored == ["candidate-q4_0.gguf", "candidate-q4_1.gguf", "candidate-q4_k_m.gguf", "candidate-q5_k_m.gguf",
                      "candidate-q6_k.gguf", "candidate-q8_0.gguf"]
    twins = {c["name"]: c for c in report["candidates"] if c.get("same_file_as")}
    assert sorted(twins) == ["q4_0-e8", "q4_k_m-e8", "q5_k_m-e8", "q6_k-e8"]
    # on 4 questions one lost answer puts q4_0 above 100 points (109.5), an unchanged file just below (97.5)
    assert twins["q4_0-e8"]["em"] == 75.0 and not twins["q4_0-e8"]["within_budget"]
    assert report["chosen"] == "q4_k_m" and [f.name for f in tmp_path.glob("*.gguf")] == ["student-q4_k_m.gguf"]


def _retokenized(student: Path, dest: Path, edit) -> Path:
    import shutil

    shutil.copytree(student, dest)
    tok = json.loads((dest / "tokenizer.json").read_text())
    edit(tok)
    (dest / "tokenizer.json").write_text(json.dumps(tok))
    return dest


def test_tokenizer_kind_is_told_by_pre_tokenizer_and_decoder_not_byte_fallback(tiny_bpe_student, tmp_path):
    from distill.errors import UserError
    from export.gguf import tokenizer_kind

    tok = json.loads((tiny_bpe_student / "tokenizer.json").read_text())
    assert tokenizer_kind(tiny_bpe_student, tok) == "gpt2"
    tok["model"]["byte_fallback"] = True  # what transformers' own GGUF loading of SmolLM2 writes
    assert tokenizer_kind(tiny_bpe_student, tok) == "gpt2"
    spm = {"model": {"type": "BPE", "byte_fallback": True, "vocab": {f"<0x{b:02X}>": b for b in range(256)}},
           "normalizer": {"type": "Sequence", "normalizers": [{"type": "Replace"}]},
           "decoder": {"type": "Sequence", "decoders": [{"type": "Replace"}, {"type": "ByteFallback"}, {"type": "Fuse"}]}}
    assert tokenizer_kind(tiny_bpe_student, spm) == "llama"
    del spm["model"]["vocab"]["<0x41>"]
    with pytest.raises(UserError, match=r"tokenizer.json: .* 1 are missing \(first <0x41>\)"):
        tokenizer_kind(tiny_bpe_student, spm)
    with pytest.raises(UserError, match="cannot tell whether this BPE tokenizer is byte-level"):
        tokenizer_kind(tiny_bpe_student, {"model": {"type": "BPE"}})


def test_byte_level_tokenizer_with_byte_fallback_exports_and_passes_parity(tiny_bpe_student, tmp_path):
    """The shape of a student saved from transformers' GGUF loading of SmolLM2: ByteLevel BPE that also says
    `byte_fallback: true`. It used to be written as a SentencePiece vocabulary without byte tokens, and
    llama.cpp aborted the export (exit 134) in the parity check."""
    def edit(tok):
        tok["model"]["byte_fallback"] = True

    student = _retokenized(tiny_bpe_student, tmp_path / "run" / "student", edit)
    r = export(str(student), "--format", "gguf", "--quant", "f16", "--no-mlflow", "export.parity_prompts=10",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "exports" / "gguf-f16" / "parity.json").read_text())
    assert report["passed"] and report["tokenizer_round_trip"] and report["top1_agreement"] >= 0.99


def test_a_gguf_that_kills_llama_cpp_is_one_sentence_and_keeps_the_files(tiny_bpe_student, tmp_path, monkeypatch):
    """Force the old mistake (a byte-level vocabulary written as SentencePiece, without byte tokens): llama.cpp
    aborts on it, in the parity check's child process; the export ends in one sentence and the files stay."""
    import export.gguf
    from distill.config import load_config
    from export.pipeline import ParityFailure, export_student

    monkeypatch.setattr(export.gguf, "tokenizer_kind", lambda student, tok_json: "llama")
    out = tmp_path / "g"
    with pytest.raises(ParityFailure) as exc:
        export_student(str(tiny_bpe_student), "gguf", "f16", out, load_config(None, ["export.parity_prompts=4"]),
                       track=False)
    msg = str(exc.value)
    assert msg.startswith("llama.cpp crashed (SIGABRT) while checking student-f16.gguf against torch") and "\n" not in msg
    assert f"the files are kept in {out}.partial" in msg
    assert (tmp_path / "g.partial" / "student-f16.gguf").exists() and not out.exists()


@pytest.mark.slow
def test_student_saved_from_transformers_gguf_loading_exports_to_q4_k_m(tmp_path):
    """As a new user would: SmolLM2 loaded by transformers from the packaged GGUF, saved, exported to q4_k_m."""
    import transformers

    from distill.models import resolve_gguf

    gguf = resolve_gguf("smollm2-135m-instruct")
    student = tmp_path / "run" / "student"
    transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(student)
    transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(student)
    assert json.loads((student / "tokenizer.json").read_text())["model"].get("byte_fallback")
    r = export(str(student), "--format", "gguf", "--quant", "q4_k_m", "--no-mlflow", "export.parity_prompts=10",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "exports" / "gguf-q4_k_m" / "parity.json").read_text())
    assert report["tokenizer_round_trip"] and report["passed"], report


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_exported_gguf_served_by_llama_cpp_server_answers_as_bench_does(tiny_bpe_student, tmp_path):
    """The export folder's Modelfile names the file and the prompt format; `python -m llama_cpp.server` on the
    exported GGUF, asked through the OpenAI chat API with only the question block (the embedded chat
    template adds the task prefix), gives the answers bench's llama.cpp runner gets."""
    import time
    import urllib.request

    from distill.data import load_dataset
    from distill.inference import LlamaCppRunner
    from distill.prompts import render_question
    from distill.student import PromptFormat

    out = tmp_path / "g"
    r = export(str(tiny_bpe_student), "--format", "gguf", "--quant", "f16", "--out", str(out), "--no-mlflow",
               "export.parity_prompts=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    modelfile = (out / "Modelfile").read_text()
    fmt = PromptFormat.load(tiny_bpe_student)
    head, tail = fmt.wrap(fmt.answer_prefix, "Answer:")
    assert "FROM ./student-f16.gguf" in modelfile and f'TEMPLATE """{head}{{{{ .Prompt }}}}{tail}"""' in modelfile
    assert 'PARAMETER stop "\\n"' in modelfile and "PARAMETER num_ctx 2048" in modelfile
    assert "PARAMETER repeat_penalty 1" in modelfile  # Ollama's and llama_cpp.server's default is 1.1
    assert "python -m llama_cpp.server --model student-f16.gguf" in (out / "README.md").read_text()

    questions = load_dataset("demo").split("test")[:6]
    runner = LlamaCppRunner(str(out / "student-f16.gguf"), threads=1)
    try:
        expected = [runner.answer(fmt.answer_prompt(ex), 32, ["\n"]).text.strip() for ex in questions]
    finally:
        runner.close()

    port = _free_port()
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(out / "student-f16.gguf"),
                               "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "2048"],
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        while True:  # ready when it answers; a server that died is reported with its log
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(base + "/models", timeout=5).read()
                break
            except OSError:
                time.sleep(0.2)
        got = []
        for ex in questions:
            body = json.dumps({"messages": [{"role": "user", "content": render_question(ex)}], "temperature": 0,
                               "repeat_penalty": 1.0, "max_tokens": 32, "stop": ["\n"]}).encode()
            req = urllib.request.Request(base + "/chat/completions", body, {"Content-Type": "application/json"})
            reply = json.loads(urllib.request.urlopen(req, timeout=120).read())
            got.append((reply["choices"][0]["message"]["content"] or "").strip())
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    assert got == expected


def test_importance_matrix_covers_every_matmul_and_round_trips_through_llama_cpp_format(tiny_bpe_student, tmp_path):
    import transformers

    from export import imatrix

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_bpe_student)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_bpe_student)
    means, tokens = imatrix.compute(model, tok, ["Q: Which gas do plants take in?", "predict: Answer: oxygen"], "LLAMA")
    n_layer = model.config.num_hidden_layers
    expected = {f"blk.{i}.{t}.weight" for i in range(n_layer)
                for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(means) == expected | {"token_embd.weight"}  # tied: the output projection multiplies by it
    assert tokens == sum(len(tok(t)["input_ids"]) for t in ["Q: Which gas do plants take in?", "predict: Answer: oxygen"])
    assert means["blk.0.ffn_down.weight"].shape == (model.config.intermediate_size,)
    assert all((v > 0).all() for v in means.values())
    imatrix.save_dat(tmp_path / "m.dat", means, 2, "tinyllm:test")
    back = imatrix.load(tmp_path / "m.dat")
    assert set(back) == set(means) and all(np.allclose(back[k], means[k], rtol=1e-6) for k in means)

    import gguf  # llama-imatrix's GGUF layout: <tensor>.in_sum2 (sums) and <tensor>.counts

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "imatrix")
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.array([[2.0, 4.0, 6.0]], dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.array([2.0], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert np.allclose(imatrix.load(tmp_path / "m.gguf")["blk.0.attn_q.weight"], [1.0, 2.0, 3.0])


def test_q4_k_m_export_uses_the_task_importance_matrix_unless_told_not_to(tiny_bpe_student, tmp_path):
    """auto: computed from the student's training questions (demo here), saved beside the export and used by
    llama.cpp's quantizer, which then writes different 4-bit weights; none (the default): no file."""
    import shutil

    student = tmp_path / "run" / "student"
    shutil.copytree(tiny_bpe_student, student)
    r = export(str(student), "--format", "gguf", "--quant", "q4_k_m", "--no-mlflow", "export.parity_prompts=4",
               "--imatrix", "auto", "data.name=demo", "export.imatrix_questions=16", "export.min_top1_agreement.q4_k_m=0",
               "export.max_mean_kl.q4_k_m=1e9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    with_m = tmp_path / "run" / "exports" / "gguf-q4_k_m"
    assert "importance matrix from 16 training questions of demo/train" in r.stderr
    report = json.loads((with_m / "parity.json").read_text())
    assert report["imatrix"]["source"].startswith("auto: 16 questions of demo/train") and (with_m / "imatrix.dat").exists()
    assert "importance matrix: auto" in (with_m / "README.md").read_text()
    r = export(str(student), "--format", "gguf", "--quant", "q4_k_m", "--no-mlflow", "export.parity_prompts=4",
               "--out", str(tmp_path / "plain"), "export.min_top1_agreement.q4_k_m=0",
               "export.max_mean_kl.q4_k_m=1e9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (tmp_path / "plain" / "imatrix.dat").exists()
    assert (with_m / "student-q4_k_m.gguf").read_bytes() != (tmp_path / "plain" / "student-q4_k_m.gguf").read_bytes()
    # a file given by the user is used as it is
    r = export(str(student), "--format", "gguf", "--quant", "q4_0", "--no-mlflow", "export.parity_prompts=4",
               "--imatrix", str(with_m / "imatrix.dat"), "--out", str(tmp_path / "given"),
               "export.min_top1_agreement.q4_0=0", "export.max_mean_kl.q4_0=1e9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "given" / "parity.json").read_text())["imatrix"]["source"] == str(with_m / "imatrix.dat")


def test_a_bad_imatrix_file_is_one_sentence_before_any_work(tiny_bpe_student, tmp_path):
    (tmp_path / "bad.dat").write_bytes(b"\x05\x00\x00\x00junk")
    for arg, msg in ((str(tmp_path / "bad.dat"), "not a llama.cpp imatrix file"), (str(tmp_path / "nope.dat"), "no such file")):
        r = export(str(tiny_bpe_student), "--format", "gguf", "--quant", "q4_0", "--no-mlflow", "--imatrix", arg,
                   "--out", str(tmp_path / "o"), cwd=tmp_path)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_quant_auto_holds_the_upper_bound_of_the_paired_drop_to_the_budget():
    """A candidate 0.5 points below torch on 400 questions, its answers' correctness differing on 1 in 20,
    is within a 1-point budget by point estimate but not certified: the bound is what the choice rests on."""
    import math

    from export.auto import Z_UPPER_95, paired_drop

    ref = [True] * 300 + [False] * 100
    cand = list(ref)
    for i in range(6):  # 6 lost ...
        cand[i] = False
    for i in range(300, 304):  # ... 4 gained: mean drop 2/400 = 0.5 points
        cand[i] = True
    drop, upper = paired_drop(ref, cand)
    d = [int(a) - int(b) for a, b in zip(ref, cand)]
    sd = math.sqrt(sum((x - 0.005) ** 2 for x in d) / 399)
    assert drop == pytest.approx(0.5) and upper == pytest.approx(100 * (0.005 + Z_UPPER_95 * sd / 20))
    assert drop <= 1 < upper
    assert paired_drop([True, False] * 10, [True, False] * 10) == (0.0, 0.0)  # the mean's bound: 0 at no change


def test_quant_auto_bound_covers_the_next_split_and_every_candidate_looked_at():
    """The rule's bound predicts the drop a fresh split as large will show, for all k candidates at once: it is
    wider than the one-candidate bound of the mean by sqrt(2) (the test split's own noise) and by the Bonferroni
    quantile; a lucky gain on validation (the OBQA q5_k_m: +2.4 above torch there, bound of the mean +0.2,
    -3.2 on test) is not certified at 1 point; an unchanged candidate is not certified at zero width."""
    import math
    from statistics import NormalDist

    from export.auto import floor_bound, paired_drop, prediction_bound

    ref = [True] * 178 + [False] * 322  # 500 validation questions, torch EM 35.6
    cand = list(ref)
    for i in range(28):  # 28 lost ...
        cand[i] = False
    for i in range(178, 218):  # ... 40 gained: the candidate is 2.4 points *above* torch on validation
        cand[i] = True
    drop, upper = paired_drop(ref, cand)
    assert drop == pytest.approx(-2.4) and upper < 1  # the rule before: certified, and it lost 3.2 on test
    one = prediction_bound(ref, cand, k=1)
    seven = prediction_bound(ref, cand, k=7)
    d = [int(a) - int(b) for a, b in zip(ref, cand)]
    sd = math.sqrt(sum((x + 0.024) ** 2 for x in d) / 499)
    z7 = NormalDist().inv_cdf(1 - 0.05 / 7)
    assert seven == pytest.approx(100 * (-0.024 + z7 * sd * math.sqrt(2 / 500)))
    assert upper < one < seven and seven > 1  # not certified at the goal's budget
    assert prediction_bound(ref, cand, k=7, n_test=5000) < seven  # a larger test split is less noisy
    same = prediction_bound(ref, ref, k=7)
    assert same == floor_bound(500, 7) and 0 < same < 1  # no change: certified, but not at 0
    assert floor_bound(50, 7) > 1  # 50 questions cannot certify one point whatever the file


def test_key_value_overrides_go_anywhere_on_the_command_line(tiny_bpe_student, tmp_path):
    """`tracking.uri=…` before SOURCE used to be taken for SOURCE ("is not a student folder", slashes collapsed)."""
    uri = "sqlite:////x/mlflow.db"
    r = export("--format", "gguf", f"tracking.uri={uri}", str(tiny_bpe_student), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"uri: {uri}" in r.stdout and f'"source": "{tiny_bpe_student}"' in r.stdout
    r = export("--format", "gguf", f"tracking.uri={uri}", cwd=tmp_path)
    assert r.returncode == 2 and "give a SOURCE" in r.stderr and "not a student folder" not in r.stderr
    r = export(str(tiny_bpe_student), str(tmp_path), "--format", "gguf", cwd=tmp_path)
    assert r.returncode == 2 and "one SOURCE is exported at a time, and 2 were given" in r.stderr


def test_dry_run_shows_the_students_own_data_and_an_existing_out(tiny_bpe_student, tmp_path):
    import shutil

    student = tmp_path / "run" / "student"
    shutil.copytree(tiny_bpe_student, student)
    (tmp_path / "run" / "resolved_config.yaml").write_text("data: {name: demo}\n")
    (tmp_path / "run" / "exports" / "gguf-q8_0").mkdir(parents=True)
    r = export(str(student), "--format", "gguf", "--quant", "q8_0", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout[r.stdout.rindex("{"):])
    assert plan["data"] == "demo" and plan["out_exists"] == "refused without --overwrite"
    assert "name: demo" in r.stdout and "tinyllm-obqa" not in r.stdout


def low_rank_trained(base: Path, student: Path):
    """A stand-in for a fine-tuned student: `base` + a rank-2 change to every matrix, norms scaled by 1.1."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, student)
    state = load_file(str(student / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for name, t in state.items():
        if t.dim() == 2 and "embed" not in name:
            u, v = torch.randn(t.shape[0], 2, generator=g), torch.randn(2, t.shape[1], generator=g)
            state[name] = t + 0.05 * u @ v
        elif t.dim() == 1:
            state[name] = t * 1.1
    save_file(state, str(student / "model.safetensors"))
    return student, state


def test_export_with_adapter_rank_ships_base_and_adapter_that_bench_loads_together(tiny_bpe_student, tmp_path):
    """--adapter-rank: the folder holds the quantized base and the LoRA file; parity is of the two together,
    the Modelfile and README load both, and bench finds them as one contestant."""
    student, _ = low_rank_trained(tiny_bpe_student, tmp_path / "run" / "student")
    r = export(str(student), "--format", "gguf", "--quant", "q8_0", "--adapter-rank", "2", "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2 and "export.adapter_base=" in r.stderr and "Traceback" not in r.stderr  # no run names the base
    r = export(str(student), "--format", "gguf", "--quant", "q8_0", "--adapter-rank", "2",
               f"export.adapter_base={tiny_bpe_student}", "--no-mlflow",
               "export.min_top1_agreement.q8_0=0.8", "export.max_mean_kl.q8_0=0.1", cwd=tmp_path)  # the tiny model's q8_0 bounds
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "run" / "exports" / "gguf-q8_0-r2"
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["adapter"]["file"] == "adapter-r2.gguf" and report["adapter"]["rank"] == 2
    assert report["size_bytes"] == (out / "student-q8_0.gguf").stat().st_size + (out / "adapter-r2.gguf").stat().st_size
    assert "ADAPTER ./adapter-r2.gguf" in (out / "Modelfile").read_text()
    assert "--lora adapter-r2.gguf" in (out / "README.md").read_text()
    assert not (out / "adapter-work").exists() and not (out / "student-f16.gguf").exists()
    from bench.run import discover
    from distill.config import load_config

    (found,) = [c for c in discover(load_config(None), student) if c["kind"] == "student-gguf"]
    assert found["name"] == "student-gguf-q8_0-r2" and found["lora"] == str(out / "adapter-r2.gguf")
    r = export(str(student), "--format", "gguf", "--quant", "auto", "--adapter-rank", "2", "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2 and "export.adapter_rank=0" in r.stderr


def test_delta_adapter_puts_the_fine_tuning_back_on_the_pretrained_base(tiny_bpe_student, tmp_path):
    """A 'trained' student = its base + a rank-2 change to every matrix + changed norms. llama.cpp with the
    base matrices alone misses the change; with the rank-2 delta adapter (export/adapter.py, applied through
    llama.cpp's LoRA path) it gives the student's logits, up to f16 rounding."""
    import torch
    import transformers
    from safetensors.torch import load_file

    from export.adapter import base_student, write_delta_adapter
    from export.gguf import write_f16
    from export.parity import gguf_parity

    student, state = low_rank_trained(tiny_bpe_student, tmp_path / "student")
    model = transformers.AutoModelForCausalLM.from_pretrained(student).eval()
    tok = transformers.AutoTokenizer.from_pretrained(student)
    prompts = ["Q: Which is a metal?\nAnswer Choices:\n(a) iron\n(b) wood\npredict: Answer: iron"] * 3

    base = base_student(student, tiny_bpe_student, tmp_path / "base")
    write_f16(base, tmp_path / "base.gguf")
    info = write_delta_adapter(student, tiny_bpe_student, tmp_path / "adapter.gguf", rank=2)
    assert info["matrices"] == 14 and info["energy_kept_min"] > 0.999  # 2 layers x 7 matrices, all of a rank-2 change
    alone = gguf_parity(model, tok, tmp_path / "base.gguf", prompts)
    adapted = gguf_parity(model, tok, tmp_path / "base.gguf", prompts, lora=str(tmp_path / "adapter.gguf"))
    assert adapted["max_abs_logit_diff"] < 0.5 and adapted["top1_agreement"] == 1.0  # f16's own bound (test above)
    assert alone["max_abs_logit_diff"] > 10 * adapted["max_abs_logit_diff"] and alone["mean_kl"] > 100 * adapted["mean_kl"]
    # The base folder keeps the student's own norms and everything but the weights.
    b = load_file(str(base / "model.safetensors"))
    assert torch.equal(b["model.norm.weight"], state["model.norm.weight"])
    assert (base / "tokenizer.json").read_text() == (student / "tokenizer.json").read_text()


def test_the_quantization_aware_pass_rounds_exactly_as_llama_cpp_does(tiny_bpe_student, tmp_path):
    """export/qat.py trains under its own copy of llama.cpp's rounding; that copy must give, block for block, the
    values llama.cpp's quantizer writes from the same f16 file (read back and dequantized with gguf-py)."""
    import gguf
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from export import gguf as gguf_mod
    from export.qat import round_like

    f16 = tmp_path / "s-f16.gguf"
    gguf_mod.write_f16(tiny_bpe_student, f16)
    src = {t.name: np.array(t.data) for t in GGUFReader(str(f16)).tensors}
    for quant in ("q4_0", "q5_0", "q8_0"):
        dst = tmp_path / f"s-{quant}.gguf"
        gguf_mod.quantize(f16, dst, quant, embeddings_q8=True)  # as the pass exports (q6_k is not mirrored)
        seen = set()
        for t in GGUFReader(str(dst)).tensors:
            if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                continue
            got = dequantize(np.array(t.data), t.tensor_type).reshape(src[t.name].shape)
            mine = round_like(torch.from_numpy(src[t.name].astype(np.float32)), t.tensor_type.name).numpy()
            assert np.array_equal(got, mine), (quant, t.name, float(np.abs(got - mine).max()))
            seen.add(t.tensor_type.name)
        assert quant.upper() in seen and seen <= {"Q4_0", "Q5_0", "Q8_0"}, (quant, seen)


def test_a_quantization_aware_export_tunes_then_quantizes_and_refuses_what_it_cannot_mirror(tiny_bpe_student, tmp_path):
    import shutil

    student = tmp_path / "run" / "student"
    shutil.copytree(tiny_bpe_student, student)
    r = export(str(student), "--format", "gguf", "--quant", "q4_0", "--qat", "16", "--no-mlflow", "data.name=demo",
               "export.parity_prompts=4", "export.qat_lr=1e-3", "export.min_top1_agreement.q4_0=0",
               "export.max_mean_kl.q4_0=1e9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "run" / "exports" / "gguf-q4_0-qat16"
    qat = json.loads((out / "parity.json").read_text())["qat"]
    assert qat["questions"] == 16 and qat["source"] == "demo/train" and qat["steps"] == 2
    assert qat["types"]["blk.0.attn_q.weight"] == "Q4_0"
    assert qat["types"]["token_embd.weight"] == "Q8_0"  # a type the pass mirrors, where llama.cpp may pick q6_k
    assert not (out / "qat-student").exists() and not list(out.glob("probe-*"))
    from bench.run import discover
    from distill.config import load_config

    (found,) = [c for c in discover(load_config(None), student) if c["kind"] == "student-gguf"]
    assert found["name"] == "student-gguf-q4_0-qat16" and "quantization-aware" in found["runtime"]
    r = export(str(student), "--format", "gguf", "--quant", "q4_0", "--no-mlflow", "--out", str(tmp_path / "plain"),
               "export.parity_prompts=4", "export.min_top1_agreement.q4_0=0", "export.max_mean_kl.q4_0=1e9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "student-q4_0.gguf").read_bytes() != (tmp_path / "plain" / "student-q4_0.gguf").read_bytes()
    for args, msg in ((("--quant", "q4_k_m", "--qat", "4"), "needs --quant q4_0, q5_0, q8_0"),
                      (("--quant", "q4_0", "--qat", "4", "--imatrix", "auto"), "cannot go together")):
        r = export(str(student), "--format", "gguf", *args, "--no-mlflow", "--out", str(tmp_path / "no"), cwd=tmp_path)
        assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert not (tmp_path / "no").exists()


def test_per_tensor_types_reach_the_file_and_its_name_and_a_pattern_that_matches_nothing_is_one_sentence(
        tiny_bpe_student, tmp_path):
    """--tensor-type goes to llama.cpp's quantizer as tt_overrides: the matched matrices hold that type, the rest
    --quant's; the folder and bench contestant carry it in their name; a typo'd pattern or --quant auto is refused."""
    import shutil

    from export.gguf import held_types

    student = tmp_path / "run" / "student"
    shutil.copytree(tiny_bpe_student, student)
    r = export(str(student), "--format", "gguf", "--quant", "q4_0", "--tensor-type", "ffn_down=q8_0",
               "--tensor-type", r"blk\.0\.attn_v=q5_0", "--no-mlflow", "data.name=demo", "export.parity_prompts=4",
               "export.min_top1_agreement.q4_0=0", "export.max_mean_kl.q4_0=1e9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "run" / "exports" / "gguf-q4_0-ffn_down.q8_0-blk_0_attn_v.q5_0"
    held = held_types(out / "student-q4_0.gguf")
    assert {k for n, k in held.items() if "ffn_down" in n} == {"Q8_0"}
    assert held["blk.0.attn_v.weight"] == "Q5_0" and held["blk.1.attn_v.weight"] == "Q4_0"
    assert held["blk.0.attn_q.weight"] == "Q4_0" and held["blk.0.ffn_up.weight"] == "Q4_0"
    report = json.loads((out / "parity.json").read_text())["tensor_types"]
    assert report["overrides"] == [["ffn_down", "q8_0"], [r"blk\.0\.attn_v", "q5_0"]] and report["held"]["Q8_0"] >= 2
    from bench.run import discover
    from distill.config import load_config

    (found,) = [c for c in discover(load_config(None), student) if c["kind"] == "student-gguf"]
    assert found["name"] == "student-gguf-q4_0-ffn_down.q8_0-blk_0_attn_v.q5_0", found
    # with --qat the token embedding is kept at q8_0 unless a pattern gives it a type: the pattern wins
    r = export(str(student), "--format", "gguf", "--quant", "q4_0", "--tensor-type", "token_embd=q5_0", "--qat", "8",
               "--no-mlflow", "data.name=demo", "export.parity_prompts=4", "export.min_top1_agreement.q4_0=0",
               "export.max_mean_kl.q4_0=1e9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    qat_out = tmp_path / "run" / "exports" / "gguf-q4_0-token_embd.q5_0-qat8"
    assert held_types(qat_out / "student-q4_0.gguf")["token_embd.weight"] == "Q5_0"
    assert json.loads((qat_out / "parity.json").read_text())["qat"]["types"]["token_embd.weight"] == "Q5_0"
    for args, msg in ((("--quant", "q4_0", "--tensor-type", "ffn_dwn=q8_0"), "matches none of this student's matrices"),
                      (("--quant", "q4_0", "--tensor-type", "ffn_down=q9"), "is not PATTERN=TYPE"),
                      (("--quant", "auto", "--tensor-type", "ffn_down=q8_0"), "chooses among whole-file types")):
        r = export(str(student), "--format", "gguf", *args, "--no-mlflow", "--out", str(tmp_path / "no"), cwd=tmp_path)
        assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert not (tmp_path / "no").exists() and not (tmp_path / "no.partial").exists()


def test_gptq_rounding_lands_on_llama_cpps_grid_and_beats_nearest_rounding_on_its_inputs():
    """export/gptq.py must hand llama.cpp values it re-quantizes to themselves (so the file holds GPTQ's blocks),
    and on the inputs it was given the rounded matrix's outputs must be closer to fp32 than nearest rounding's."""
    import torch

    from export.gptq import round_matrix
    from export.qat import round_like

    g = torch.Generator().manual_seed(0)
    # correlated inputs, as a transformer's are (GPTQ's gain comes from the correlation)
    x = (torch.randn(512, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 96, generator=g, dtype=torch.float64)
         + 0.1 * torch.randn(512, 96, generator=g, dtype=torch.float64))
    x[:, 5] = 0.0  # a dead input column
    h = x.T @ x
    w = torch.randn(24, 96, generator=g) * 0.05
    for kind in ("Q4_0", "Q5_0"):
        q = round_matrix(w, h, kind)
        assert torch.equal(round_like(q, kind), q), kind  # a fixed point of llama.cpp's reference rounding
        ref = w.half().double()
        err = [float((((ref - c.double()) @ h) * (ref - c.double())).sum()) for c in (q, round_like(w, kind))]
        assert err[0] < 0.8 * err[1], (kind, err)
        assert torch.all(q[:, 5] == 0)  # an input that never fires gets no weight


def test_a_gptq_export_holds_the_rounded_blocks_and_refuses_what_it_cannot_go_with(tiny_bpe_student, tmp_path):
    import shutil

    import gguf
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from distill.config import StudentConfig, load_config
    from distill.student import load_student
    from export import gptq
    from export.qat import param_types
    from export.source import training_pairs

    student = tmp_path / "run" / "student"
    shutil.copytree(tiny_bpe_student, student)
    r = export(str(student), "--format", "gguf", "--quant", "q4_0", "--gptq", "16", "--no-mlflow", "data.name=demo",
               "export.parity_prompts=4", "export.min_top1_agreement.q4_0=0", "export.max_mean_kl.q4_0=1e9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "run" / "exports" / "gguf-q4_0-gptq16"
    facts = json.loads((out / "parity.json").read_text())["gptq"]
    assert facts["questions"] == 16 and facts["source"] == "demo/train" and facts["matrices"] > 0
    assert facts["output_error_vs_nearest"] < 1.0
    assert not (out / "gptq-student").exists() and not list(out.glob("probe-*"))
    # the same rounding, redone here, is what the file holds (sorted values: llama.cpp permutes q/k rows)
    file = out / "student-q4_0.gguf"
    held = {t.name: t for t in GGUFReader(str(file)).tensors}
    model, tok, _ = load_student(StudentConfig(model=str(student)))
    ptypes = param_types(model, "LLAMA", {n: t.tensor_type.name for n, t in held.items()})
    pairs, _ = training_pairs(student, load_config(None, ["data.name=demo"]).data, 16)
    gptq.apply(model.eval(), tok, [p + a for p, a in pairs], ptypes)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    compared = 0
    for name, p in model.named_parameters():
        if ptypes.get(name) == "Q4_0":
            t = held[names.get_name(name, try_suffixes=(".weight",))]
            got = np.sort(dequantize(np.array(t.data), t.tensor_type).ravel())
            assert np.array_equal(got, np.sort(p.detach().numpy().ravel())), name
            compared += 1
    assert compared == facts["matrices"]
    from bench.run import discover

    (found,) = [c for c in discover(load_config(None), student) if c["kind"] == "student-gguf"]
    assert found["name"] == "student-gguf-q4_0-gptq16" and "GPTQ" in found["runtime"]
    for args, msg in ((("--quant", "q8_0", "--gptq", "4"), "has none"),
                      (("--quant", "q8_0", "--tensor-type", "ffn_down=q8_0", "--gptq", "4"), "this student has none"),
                      (("--quant", "q4_0", "--gptq", "4", "--imatrix", "auto"), "cannot go together"),
                      (("--quant", "q4_0", "--gptq", "4", "--qat", "4"), "use one of them")):
        r = export(str(student), "--format", "gguf", *args, "--no-mlflow", "data.name=demo", "--out",
                   str(tmp_path / "no"), cwd=tmp_path)
        assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert not (tmp_path / "no").exists() and not (tmp_path / "no.partial").exists()


def test_quant_auto_with_gptq_scores_the_gptq_rounded_files_as_candidates_of_their_own(tiny_bpe_student, tmp_path):
    student = student_with_validation_data(tiny_bpe_student, tmp_path)
    r = export(str(student), "--format", "gguf", "--quant", "auto", "--gptq", "8", "--max-drop", "100", "--no-mlflow",
               "export.parity_prompts=5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "run" / "exports" / "gguf-auto-gptq8"
    auto = json.loads((out / "parity.json").read_text())["auto"]
    by_name = {c["name"]: c for c in auto["candidates"]}
    assert {"q4_0-gptq8", "q5_0-gptq8", "q4_0", "q8_0"} <= set(by_name) and len(by_name) == 12
    for grid in ("q4_0", "q5_0"):
        c = by_name[f"{grid}-gptq8"]
        assert c["quant"] == grid and c["gptq"]["questions"] == 8 and c["gptq"]["output_error_vs_nearest"] < 1.0
    assert by_name["q4_0-gptq8"]["sha256"] != by_name["q4_0"]["sha256"]  # rounded otherwise, so its own file
    assert [f.name for f in out.glob("*.gguf")] == [f"student-{auto['chosen']}.gguf"]  # no f16 or candidate left
