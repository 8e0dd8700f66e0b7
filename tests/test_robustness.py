"""What a user gets wrong or a kill leaves behind: one-sentence errors, partial checkpoints, model identity.

Run: pytest tests/test_robustness.py
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.errors import UserError, read_utf8
from test_train import run_cli, write_run_config

BIN = Path(sys.executable).parent


def cli(*args, cwd):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, timeout=600)


# ---------------------------------------------------------------------------------------------
# Bad input: one sentence naming the file or key, exit status 2, no traceback.


def test_duplicate_ids_in_a_jsonl_split_are_one_sentence(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    row = {"id": "q7", "question": "q", "choices": ["a", "b"], "answer": 0}
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in (row, {**row, "id": "q8"}, row)) + "\n")
    r = cli("tinyllm-distill", "data", "jsonl", "--path", str(folder), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{folder / 'train.jsonl'} line 3: id 'q7' is already the id of line 1" in r.stderr


def test_an_output_dir_that_is_a_file_is_one_sentence(tmp_path):
    from distill.config import Config, write_resolved

    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(UserError, match=r"output_dir .*taken is a file, not a folder; set output_dir="):
        write_resolved(Config(), tmp_path / "taken")
    (tmp_path / "link").symlink_to(tmp_path / "gone")  # state kept outside the checkout, lost with its machine
    with pytest.raises(UserError, match=r"output_dir .*link is a link to .*gone, which does not exist; create that"):
        write_resolved(Config(), tmp_path / "link")


def test_a_teacher_model_that_is_not_a_gguf_is_one_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: demo}\nteachers: [{name: t, backend: llama.cpp, model: notes.txt}]\n"
                   f"output_dir: {tmp_path / 'out'}\n")
    r = cli("tinyllm-distill", "generate", str(cfg), "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "teacher 't' model: 'notes.txt' is not a GGUF file" in r.stderr


@pytest.mark.parametrize("model", ["google/flan-t5-small", "someone/no-such-model"])
def test_a_hub_model_that_cannot_be_fetched_is_one_sentence(tmp_path, model, monkeypatch):
    """configs/paper/*.yaml name FLAN-T5 on the Hub; without network (HF_HUB_OFFLINE here) and not cached."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{name: demo}}\nstudent: {{model: {model}}}\noutput_dir: {tmp_path / 'out'}\n")
    r = cli("tinyllm-distill", "eval", str(cfg), "train.eval_method=loglik", "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"cannot load '{model}' from the Hugging Face Hub or its local cache" in r.stderr
    assert "point student.model at a local model folder, a .gguf file or a packaged model" in r.stderr


def test_a_utf16_data_file_is_one_sentence(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes('{"question": "q", "choices": ["a", "b"], "answer": 0}\n'.encode("utf-16"))
    r = cli("tinyllm-distill", "data", "jsonl", "--path", str(folder), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{folder / 'train.jsonl'} line 1: not UTF-8 text (byte 0xff at offset 0)" in r.stderr
    assert "UTF-16 byte-order mark" in r.stderr and "save the file as UTF-8" in r.stderr


def test_non_utf8_config_and_a_bad_byte_line_are_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"train:\n  lr: 1e-4\n  # caf\xe9\n")
    with pytest.raises(UserError, match=r"c\.yaml line 3: not UTF-8 text \(byte 0xe9 at offset 25\)"):
        read_utf8(cfg)
    r = cli("tinyllm-distill", "run", str(cfg), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf{}\n")
    assert read_utf8(bom) == "{}\n"  # a UTF-8 byte-order mark is fine


@pytest.mark.parametrize("override, words", [
    ("train.lr=-1", "train.lr must be a positive number, got -1.0"),
    ("train.epochs=0", "train.epochs must be above 0, got 0.0"),
    ("train.max_steps=0", "train.max_steps must be at least 1"),
    ("train.micro_batch_tokens=0", "train.micro_batch_tokens must be at least 1"),
    ("train.save_every=-5", "train.save_every must be >= 0"),
])
def test_out_of_range_training_values_fail_the_dry_run(tmp_path, override, words):
    r = cli("tinyllm-distill", "run", "--dry-run", str(Path(__file__).parent.parent / "configs/quickstart.yaml"), override,
            cwd=tmp_path)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


def test_an_unknown_quant_is_refused_before_the_weights_are_read(tmp_path):
    corrupt = tmp_path / "student"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{}")
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage")
    r = cli("tinyllm-export", str(corrupt), "--format", "gguf", "--quant", "q3_weird", cwd=tmp_path)
    assert r.returncode == 2 and "--quant q3_weird is not a GGUF option" in r.stderr
    assert "safetensors" not in r.stderr  # the corrupt weights were never opened
    r = cli("tinyllm-export", str(corrupt), "--format", "onnx", "--quant", "q8_0", "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "is not an ONNX option" in r.stderr


# ---------------------------------------------------------------------------------------------
# A kill while a checkpoint is written leaves `step-N.tmp`: never resumed from, always cleaned up.


def partial_checkpoint(folder: Path, src: Path | None = None) -> Path:
    """What SIGKILL right after `step-N.tmp` appears leaves: some of the files, no state.json."""
    folder.mkdir(parents=True)
    if src is not None:
        shutil.copy(src / "model.safetensors", folder / "model.safetensors")
    return folder


def test_resume_skips_a_partial_checkpoint_beside_a_complete_one(tmp_path, tiny_student):
    cfg = write_run_config(tmp_path, tiny_student, save_every=2, max_steps=6, epochs=2)
    run_cli("run", str(cfg), "--no-mlflow", cwd=tmp_path)
    out = tmp_path / "out"
    full = load_file(str(out / "student" / "model.safetensors"))
    shutil.rmtree(out / "student")
    shutil.rmtree(out / "checkpoints" / "step-000004")
    partial_checkpoint(out / "checkpoints" / "step-000004.tmp", out / "checkpoints" / "step-000002")
    r = run_cli("run", str(cfg), "--no-mlflow", "--resume", cwd=tmp_path)
    assert "removed 1 partial checkpoint(s)" in r.stderr and "resumed from" in r.stderr and "step-000002" in r.stderr
    assert not list((out / "checkpoints").glob("*.tmp"))
    resumed = load_file(str(out / "student" / "model.safetensors"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_resume_with_only_a_partial_checkpoint_starts_fresh_and_says_so(tmp_path, tiny_student):
    cfg = write_run_config(tmp_path, tiny_student, save_every=2, max_steps=4, epochs=2)
    run_cli("run", str(cfg), "--no-mlflow", "output_dir=" + str(tmp_path / "reference"), cwd=tmp_path)
    partial_checkpoint(tmp_path / "out" / "checkpoints" / "step-000002.tmp")
    r = run_cli("run", str(cfg), "--no-mlflow", "--resume", cwd=tmp_path)
    assert "the only checkpoint was partial" in r.stderr and "starting from step 0" in r.stderr
    one = load_file(str(tmp_path / "reference" / "student" / "model.safetensors"))
    two = load_file(str(tmp_path / "out" / "student" / "model.safetensors"))
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_quickstart_script_does_not_take_a_partial_checkpoint_for_one():
    script = (Path(__file__).parent.parent / "scripts" / "quickstart.sh").read_text()
    line = next(line for line in script.splitlines() if line.startswith("latest="))
    assert "step-*[0-9]" in line  # `step-000002.tmp` ends in 'p'


# ---------------------------------------------------------------------------------------------
# Model identity follows the weights' content.


def test_same_shape_folders_with_different_weights_get_different_identities(tmp_path, tiny_student, monkeypatch):
    import transformers

    from distill.models import load_causal_lm

    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a" / "student", tmp_path / "b" / "student"
    shutil.copytree(tiny_student, a)
    shutil.copytree(tiny_student, b)
    assert load_causal_lm(str(a))[2] == load_causal_lm(str(b))[2]  # same name, same bytes: same identity
    model = transformers.AutoModelForCausalLM.from_pretrained(b)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # same shape, same file size, other weights
    model.save_pretrained(b, safe_serialization=True)
    assert (a / "model.safetensors").stat().st_size == (b / "model.safetensors").stat().st_size
    assert load_causal_lm(str(a))[2] != load_causal_lm(str(b))[2]
    assert json.loads((tmp_path / "cache" / "hashes.json").read_text())  # hashed once, remembered by mtime


def test_a_teacher_retrained_in_place_regenerates_its_rationales(tmp_path, tiny_student):
    import transformers

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_student, teacher)
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"""output_dir: {tmp_path / 'out'}
data: {{name: demo, max_train: 3}}
teachers:
  - {{name: t, backend: transformers, model: {teacher}, max_new_tokens: 4, chat: false}}
rationales: {{k_shot: 0, cache_dir: {tmp_path / 'cache'}}}
""")
    env_run = ["generate", str(cfg), "--no-mlflow"]
    first = run_cli(*env_run, cwd=tmp_path, env={"TINYLLM_CACHE": str(tmp_path / "tc")})
    assert "0 cached, 3 to generate" in first.stderr
    again = run_cli(*env_run, cwd=tmp_path, env={"TINYLLM_CACHE": str(tmp_path / "tc")})
    assert "3 cached, 0 to generate" in again.stderr
    model = transformers.AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():
        next(model.parameters()).mul_(-1)
    model.save_pretrained(teacher, safe_serialization=True)  # "re-trained" in place: same shape and size
    retrained = run_cli(*env_run, cwd=tmp_path, env={"TINYLLM_CACHE": str(tmp_path / "tc")})
    assert "0 cached, 3 to generate" in retrained.stderr


def test_checkpoint_rng_state_round_trips_python_numpy_and_torch(tmp_path):
    import random

    import numpy as np

    from distill.checkpoints import rng_states, set_rng_states

    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))  # loads without unpickling objects
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
