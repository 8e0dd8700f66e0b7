"""The three console scripts as a user runs them. Run: pytest tests/test_cli.py"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script", ["tinyllm-distill", "tinyllm-export", "tinyllm-bench"])
def test_help_shows_usage_and_examples(script):
    exe = shutil.which(script, path=str(BIN)) or shutil.which(script)
    assert exe, f"{script} is not installed; run scripts/setup.sh"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage:" in out and "examples:" in out and script in out


def test_dry_run_prints_config_and_plan_without_models(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: demo, max_train: 20}\n"
                   "teachers:\n  - {name: a, backend: files, model: x.jsonl}\n  - {name: b, backend: files, model: y.jsonl}\n"
                   "train: {batch_size: 4, grad_accum: 2}\n")
    r = subprocess.run([str(BIN / "tinyllm-distill"), "run", str(cfg), "train.epochs=2", "--dry-run"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    resolved, plan = r.stdout.split("# plan\n")
    assert "epochs: 2.0" in resolved
    plan = json.loads(plan)
    assert plan["dataset"]["train"] == 20 and plan["optimizer_steps"] == 5  # ceil(20 * 2 / (4 * 2))
    assert plan["tasks"] == ["answer", "rationale:a", "rationale:b"]
    assert plan["method"] == "TinyLLM (2 teachers)"
    probe = subprocess.run([sys.executable, "-c",
                            "import sys; from distill.cli import plan; from distill.config import load_config;"
                            f"plan(load_config({str(cfg)!r})); print('transformers' in sys.modules, 'llama_cpp' in sys.modules)"],
                           capture_output=True, text=True, cwd=REPO)
    assert probe.stdout.split() == ["False", "False"], probe.stderr


def test_config_typo_is_one_sentence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trian:\n  lr: 1\n")
    r = subprocess.run([str(BIN / "tinyllm-distill"), "run", str(cfg), "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {cfg}: unknown key 'trian'. Did you mean 'train'?"


def test_readme_commands_are_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    install, test = blocks[0].strip(), blocks[1].strip()
    assert "\n" not in install and "\n" not in test, "the README's first two blocks are one command each"
    assert install.split(" && ")[0] in ci, "CI must install the way the README does"
    assert test in ci, "CI must run the README's exact test command"
