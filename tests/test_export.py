"""tinyllm-export on a tiny random-init llama student with a byte-level BPE tokenizer.

Run: pytest tests/test_export.py
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert report["prompts"] == 8 and report["positions"] > 100
    readme = (tmp_path / "g" / "README.md").read_text()
    assert "llama-cli -m student-f16.gguf" in readme and "predict:" in readme

    import gguf

    fields = gguf.GGUFReader(str(tmp_path / "g" / "student-f16.gguf")).fields
    assert "predict:" in fields["tokenizer.chat_template"].contents()
    assert json.loads(fields["tinyllm.prompt_format"].contents())["answer_prefix"] == "predict:"


def test_gguf_quantized_thresholds_decide_and_failures_keep_files(tiny_bpe_student, tmp_path):
    # A random-init model has near-flat next-token distributions, so q4_k_m flips many top-1 choices:
    # with the default threshold the export must fail, say why, and keep the files.
    r = export(str(tiny_bpe_student), "--format", "gguf", "--quant", "q4_k_m", "--out", str(tmp_path / "q4"), "--no-mlflow",
               cwd=tmp_path)
    assert r.returncode == 1
    assert "parity check failed (top1_agreement >= 0.8)" in r.stderr and "kept in" in r.stderr
    assert (tmp_path / "q4" / "student-q4_k_m.gguf").exists() and (tmp_path / "q4" / "parity.json").exists()
    r = export(str(tiny_bpe_student), "--format", "gguf", "--quant", "q8_0", "--out", str(tmp_path / "q8"), "--no-mlflow",
               "export.min_top1_agreement.q8_0=0.8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "q8" / "parity.json").read_text())
    assert report["mean_kl"] < 0.01 and report["top1_agreement"] >= 0.8


def test_unsupported_architecture_is_refused_in_one_sentence(tiny_student, tmp_path):
    from distill.config import load_config
    from distill.errors import UserError
    from export.gguf import check_supported

    with pytest.raises(UserError, match=r"GGUF export supports LlamaForCausalLM, Qwen2ForCausalLM students; this one is T5"):
        check_supported({"architectures": ["T5ForConditionalGeneration"]})
    r = export(str(tmp_path / "nowhere"), "--format", "gguf", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert r.returncode == 2 and "is not a student folder" in r.stderr and "Traceback" not in r.stderr


def test_onnx_export_matches_torch(tiny_bpe_student, tmp_path):
    r = export(str(tiny_bpe_student), "--format", "onnx", "--out", str(tmp_path / "o"), "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "o" / "parity.json").read_text())
    assert report["passed"] and report["max_abs_logit_diff"] < 1e-2 and report["tokenizer_round_trip"]
    assert (tmp_path / "o" / "tokenizer.json").exists() and (tmp_path / "o" / "prompt_format.json").exists()
