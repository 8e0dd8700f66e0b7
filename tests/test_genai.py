"""tinyllm-export --format genai (onnxruntime-genai's model builder) and its bench contestant, on tiny students.

Run: pytest tests/test_genai.py
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is a dependency of tinyllm (setup.py)")
BIN = Path(sys.executable).parent


def export(*args, cwd):
    return subprocess.run([str(BIN / "tinyllm-export"), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def genai_student(tmp_path_factory) -> Path:
    """The tiny byte-level student with an MLP width unlike its vocabulary size (onnxruntime-genai 0.15's builder
    mis-converts a model whose intermediate_size equals vocab_size: see export/genai.py), and with the
    `byte_fallback: true` and SentencePiece decoder steps that transformers' own GGUF loading of SmolLM2 writes."""
    from conftest import make_tiny_bpe_student
    from distill.data import load_dataset
    from distill.prompts import render_question

    texts = [render_question(ex) for ex in load_dataset("demo").splits["train"]]
    texts.append("predict: explain_a: Answer: Explanation: Because So the answer is")
    student = make_tiny_bpe_student(tmp_path_factory.mktemp("genai") / "run" / "student", texts, intermediate=768)
    tok = json.loads((student / "tokenizer.json").read_text())
    tok["model"]["byte_fallback"] = True
    tok["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"},
                                                       {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                       tok["decoder"]]}
    (student / "tokenizer.json").write_text(json.dumps(tok))
    return student


def test_genai_fp32_export_matches_torch_and_bench_answers_as_torch_does(genai_student, tmp_path):
    r = export(str(genai_student), "--format", "genai", "--quant", "none", "--no-mlflow", "export.parity_prompts=8",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = genai_student.parent / "exports" / "genai-none"
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["format"] == "genai" and report["precision"] == "fp32"
    assert report["max_abs_logit_diff"] <= 1e-3 and report["top1_agreement"] == 1.0
    # onnxruntime-genai's own tokenizer (what a device uses) gives the student's ids: the shipped tokenizer.json
    # had to be rewritten as plain byte-level BPE for that, and the student's own is left as it was.
    assert report["tokenizer_round_trip"] and "byte-level BPE" in report["tokenizer"]
    assert json.loads((genai_student / "tokenizer.json").read_text())["model"]["byte_fallback"] is True
    assert json.loads((out / "tokenizer.json").read_text())["model"]["byte_fallback"] is False
    assert (out / "genai_config.json").exists() and (out / "prompt_format.json").exists()
    assert "import onnxruntime_genai as og" in (out / "README.md").read_text()

    bench = subprocess.run([str(BIN / "tinyllm-bench"), "--student", str(genai_student), "--limit", "6", "--threads", "1",
                            "--contestants", "student-torch,student-genai-fp32", "--no-mlflow", "--out",
                            str(tmp_path / "bench"), "bench.warmup=0"], capture_output=True, text=True, cwd=tmp_path,
                           timeout=600)
    assert bench.returncode == 0, bench.stderr[-3000:]

    def predictions(name):
        rows = (tmp_path / "bench" / "contestants" / name / "predictions.jsonl").read_text().splitlines()
        return [json.loads(line) for line in rows]

    torch_rows, genai_rows = predictions("student-torch"), predictions("student-genai-fp32")
    assert len(genai_rows) == 6
    # A random model writes stray bytes, which the two decoders render differently (torch's U+FFFD per broken
    # byte, onnxruntime-genai's stream dropping them); what was generated is compared as tokens below.
    for key in ("new_tokens", "prompt_tokens", "pred_loglik", "pred_option_match", "em"):
        assert [g[key] for g in genai_rows] == [t[key] for t in torch_rows], key

    import numpy as np
    import onnxruntime_genai as og
    import torch
    import transformers

    from export.genai import tokenizer

    model = og.Model(str(out))
    tok = transformers.AutoTokenizer.from_pretrained(genai_student)
    ref = transformers.AutoModelForCausalLM.from_pretrained(genai_student).eval()
    for prompt in ("predict: Q: Which is a star?\nAnswer:", "predict: Q: What do plants need?\nAnswer:"):
        ids = [int(i) for i in tokenizer(model).encode(prompt)]
        assert ids == tok(prompt)["input_ids"]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 12, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        got = []
        while not gen.is_done():
            gen.generate_next_token()
            got.append(int(gen.get_next_tokens()[0]))
        with torch.no_grad():
            want = ref.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, min_new_tokens=12,
                                pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        assert got[:len(want)] == want[:len(got)] and len(got) >= 1


def test_genai_int4_is_matmulnbits_and_held_to_the_int4_bounds(genai_student, tmp_path):
    import onnx

    out = tmp_path / "g4"
    r = export(str(genai_student), "--format", "genai", "--out", str(out), "--no-mlflow", "export.parity_prompts=8",
               "export.min_top1_agreement.int4=0.99", cwd=tmp_path)  # int4 is the default; an impossible bound
    assert r.returncode == 1 and "parity check failed (top1_agreement >= 0.99" in r.stderr and "Traceback" not in r.stderr
    report = json.loads((out / "parity.json").read_text())
    assert report["quant"] == "int4" and report["precision"] == "int4" and not report["passed"]
    assert report["top1_agreement"] < 1.0 and report["tokenizer_round_trip"]  # quantized (4-bit random weights: ~0.2)
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all({a.name: a.i for a in n.attribute}["bits"] == 4 for n in nbits)
    assert all({a.name: a.i for a in n.attribute}["accuracy_level"] == 4 for n in nbits)


def test_genai_refuses_what_its_builder_cannot_convert_in_one_sentence(tiny_student, tmp_path):
    from conftest import make_tiny_student

    t5 = make_tiny_student(tmp_path / "t5", ["a b c"], arch="t5")
    r = export(str(t5), "--format", "genai", "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2 and "does not convert T5ForConditionalGeneration" in r.stderr and "--format onnx" in r.stderr
    assert "Traceback" not in r.stderr and not (t5.parent / "exports").exists()
    r = export(str(tiny_student), "--format", "genai", "--quant", "q4_k_m", "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2 and "not an onnxruntime-genai option" in r.stderr


def test_genai_k_quant_keeps_the_lm_head_at_int8_when_asked(genai_student, tmp_path):
    import onnx

    out = tmp_path / "gk"
    r = export(str(genai_student), "--format", "genai", "--out", str(out), "--no-mlflow", "export.parity_prompts=4",
               "export.genai_algo=k_quant", "export.genai_mixed_precision=last_matmul:int8",
               "export.min_top1_agreement.int4=0", "export.max_mean_kl.int4=100", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "parity.json").read_text())
    assert report["algo"] == "k_quant" and report["mixed_precision"] == "last_matmul:int8"
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    bits = {n.name: {a.name: a.i for a in n.attribute}["bits"] for n in graph.node if n.op_type == "MatMulNBits"}
    head = [b for name, b in bits.items() if "lm_head" in name]
    assert head == [8] and set(b for name, b in bits.items() if "lm_head" not in name) == {4}, bits
    r = export(str(genai_student), "--format", "genai", "--out", str(tmp_path / "bad"), "--no-mlflow",
               "export.genai_mixed_precision=lm_head:int8", cwd=tmp_path)
    assert r.returncode == 2 and "export.genai_mixed_precision: 'lm_head:int8' is not selector:type" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "bad").exists()
