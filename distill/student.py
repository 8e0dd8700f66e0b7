"""The student as export and bench see it: its prompt format, answer matching and loading.

How it is asked (the prompt format saved beside it), how a generated answer is matched to an option,
and how it is loaded. Importing this module does not import torch."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from distill import layout
from distill.data import Example
from distill.errors import require
from distill.prompts import render_question

# ---------------------------------------------------------------------------------------------
# Prompt format: how the student is asked. Saved beside the student so export and bench (and any
# runtime on a device) ask it the same way.


@dataclass
class PromptFormat:
    answer_prefix: str = "predict:"
    rationale_prefix: str = "explain_{teacher}:"
    task_position: str = "before"
    """'before': "predict: Q: …\nAnswer:" (the paper's T5 layout). 'after': "Q: …\npredict: Answer:",
    so a question's tasks share their leading tokens (see the module docstring)."""

    def wrap(self, prefix: str, cue: str) -> tuple[str, str]:
        """(text before, text after) the question block for a task with this prefix and cue."""
        if self.task_position == "after":
            return "", f"\n{prefix} {cue}"
        return f"{prefix} ", f"\n{cue}"

    def answer_prompt(self, ex: Example) -> str:
        head, tail = self.wrap(self.answer_prefix, "Answer:")
        return head + render_question(ex) + tail

    def rationale_prompt(self, ex: Example, teacher: str) -> str:
        head, tail = self.wrap(self.rationale_prefix.format(teacher=teacher), "Explanation:")
        return head + render_question(ex) + tail

    @staticmethod
    def answer_target(ex: Example) -> str:
        return f" {ex.answer_text}"

    def save(self, folder: Path) -> None:
        head, tail = self.wrap(self.answer_prefix, "Answer:")
        doc = {"answer_prefix": self.answer_prefix, "rationale_prefix": self.rationale_prefix,
               "task_position": self.task_position,
               "answer_template": head + "Q: {question}\nAnswer Choices:\n(a) {choice_a}\n(b) {choice_b}\n…" + tail,
               "note": "The student answers with the text of the chosen option after 'Answer:'."}
        (Path(folder) / layout.PROMPT_FORMAT).write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "PromptFormat":
        f = Path(folder) / layout.PROMPT_FORMAT
        if not f.exists():
            return cls()
        doc = json.loads(f.read_text())
        return cls(doc["answer_prefix"], doc["rationale_prefix"], doc.get("task_position", "before"))


# ---------------------------------------------------------------------------------------------
# Students.


def is_seq2seq(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def load_student(scfg, dtype=None):
    """(model, tokenizer, identity) for a decoder-only or encoder-decoder (T5) student."""
    import torch
    import transformers

    from distill.models import load_causal_lm

    seq2seq = scfg.architecture == "seq2seq"
    if scfg.architecture == "auto" and Path(scfg.model).is_dir() and (Path(scfg.model) / "config.json").exists():
        seq2seq = bool(json.loads((Path(scfg.model) / "config.json").read_text()).get("is_encoder_decoder"))
    elif scfg.architecture == "auto" and "t5" in scfg.model.lower():
        seq2seq = True
    if seq2seq:
        from distill.models import hub_errors

        with hub_errors(scfg.model):
            tok = transformers.AutoTokenizer.from_pretrained(scfg.model, trust_remote_code=scfg.trust_remote_code)
            model = transformers.AutoModelForSeq2SeqLM.from_pretrained(scfg.model, dtype=dtype or torch.float32,
                                                                       use_safetensors=True,
                                                                       trust_remote_code=scfg.trust_remote_code)
        identity = scfg.model
    else:
        model, tok, identity = load_causal_lm(scfg.model, trust_remote_code=scfg.trust_remote_code, dtype=dtype)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if scfg.lora:
        peft = require("peft")
        targets = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q", "k", "v", "o")
                   if any(name.endswith("." + n) for name, _ in model.named_modules())]
        model = peft.get_peft_model(model, peft.LoraConfig(r=scfg.lora_r, lora_alpha=scfg.lora_alpha, lora_dropout=0.0,
                                                           target_modules=targets,
                                                           task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"))
    return model, tok, identity


def prompt_format(scfg, model) -> PromptFormat:
    """The student's prompt format from its config (task_position 'auto' resolved for this model)."""
    position = scfg.task_position
    if position == "auto":
        position = "before" if is_seq2seq(model) else "after"
    return PromptFormat(scfg.answer_prefix, scfg.rationale_prefix, position)


def load_saved_student(folder: Path, device):
    """A student folder written by training (safetensors), in fp32 on `device`."""
    import torch
    import transformers

    config = json.loads((folder / "config.json").read_text())
    auto = transformers.AutoModelForSeq2SeqLM if config.get("is_encoder_decoder") else transformers.AutoModelForCausalLM
    return auto.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).to(device)


# ---------------------------------------------------------------------------------------------
# Matching a generated answer to an option.


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", s.lower()).strip()


def match_option(generated: str, choices: tuple[str, ...]) -> int | None:
    """The option a generated answer names: its exact text, or a leading '(b)' letter."""
    first = generated.strip().split("\n")[0]
    g = _norm(first)
    for i, c in enumerate(choices):
        if g == _norm(c):
            return i
    m = re.match(r"\(?([a-z])\)", first.strip().lower())
    if m and ord(m.group(1)) - 97 < len(choices):
        return ord(m.group(1)) - 97
    for i, c in enumerate(choices):
        if _norm(c) and g.startswith(_norm(c)):
            return i
    return None


def exact_match(generated: str, gold: str) -> bool:
    """The paper's metric: the generated answer's first line is the gold option's text (surrounding
    whitespace aside). Stricter than `match_option`, which also takes a leading '(b)' or a prefix."""
    return generated.strip().split("\n")[0].strip() == gold.strip()


NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def normalise_number(text: str) -> str | None:
    """A number as GSM8K's and SVAMP's scripts compare them: no thousands commas or dollar sign, and
    integral values without a decimal part ("1,000.00" -> "1000"); None if it is not a number."""
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        x = float(t)
    except ValueError:
        return None
    return str(int(x)) if x.is_integer() else repr(x)


def final_number(text: str) -> str | None:
    """The last number in a text, normalised: what a free-form numeric answer (or a chain of thought ending
    "… so the answer is 72.") answers."""
    found = NUMBER.findall(text)
    return normalise_number(found[-1]) if found else None


def answer_is_right(generated: str, ex: Example, first_line: bool = True) -> bool:
    """EM, one rule for every task: multiple choice, the paper's exact match (`exact_match`); free-form,
    the final answer equals the gold one — the last number of the answer for numeric golds (GSM8K, SVAMP,
    normalised as their scripts do), else the text itself. `first_line`: read the answer's first line
    only (a student's answer; a teacher's chain of thought is read whole)."""
    if ex.choices:
        return exact_match(generated, ex.answer_text)
    text = generated.strip().split("\n")[0] if first_line else generated
    gold = normalise_number(ex.target or "")
    if gold is not None:
        return final_number(text) == gold
    return text.strip() == (ex.target or "").strip()
