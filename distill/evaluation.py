"""Scoring a student on multiple-choice questions: option log-likelihood and greedy generation.

Log-likelihood picks by mean (and, beside it, summed) log-probability per option token; generation is
scored by exact match of the gold option's text (the paper's metric) and by the option it names."""
from __future__ import annotations

import time

import torch

from distill.batching import can_share, encode, fits_window, pack, packed_token_losses, token_losses
from distill.data import Example
from distill.student import PromptFormat, exact_match, is_seq2seq, match_option

# ---------------------------------------------------------------------------------------------
# Evaluation: option log-likelihood and greedy generation with exact match (the paper's metric).


@torch.inference_mode()
def option_scores(model, tok, fmt: PromptFormat, ex: Example) -> list[float]:
    """Mean log-probability per token of each option after the answer prompt."""
    return [total / max(1, count) for total, count in option_logprobs(model, tok, fmt, ex)]


@torch.inference_mode()
def option_logprobs(model, tok, fmt: PromptFormat, ex: Example) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each option after the answer prompt."""
    seq2seq = is_seq2seq(model)
    samples = [encode(tok, fmt.answer_prompt(ex), " " + c, "answer", seq2seq, 4096) for c in ex.choices]
    for s in samples:  # score the option text only, not the end-of-sequence token
        s.labels = s.labels[:-1] if seq2seq else s.labels[:-1] + [-100]
    if can_share(model) and fits_window(model, [packed := pack(samples)]):  # the options share the prompt
        sums, counts = packed_token_losses(model, [packed], tok.pad_token_id)
    else:
        sums, counts = token_losses(model, samples, tok.pad_token_id)
    return [(-float(a), int(b)) for a, b in zip(sums, counts)]


@torch.inference_mode()
def generate_answer(model, tok, fmt: PromptFormat, ex: Example, max_new_tokens: int = 32) -> str:
    enc = tok(fmt.answer_prompt(ex), return_tensors="pt").to(next(model.parameters()).device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0] if is_seq2seq(model) else out[0, enc["input_ids"].shape[1]:]
    return tok.decode(new, skip_special_tokens=True)


EVAL_PICKS = {"loglik": ("loglik", "loglik_sum"), "generate": ("generate", "em")}


def evaluate(model, tok, fmt: PromptFormat, examples: list[Example], method: str = "both", log=None) -> dict:
    """Accuracy by option log-likelihood and/or generation; per-question predictions included.

    The log-likelihood pick (`loglik`) normalises by option length (mean log-prob per token);
    `loglik_sum`, the pick by summed log-prob, is recorded beside it so the effect of the
    normalisation can be read off the same run. Generation is scored twice: `em`, the paper's exact
    match of the generated text to the gold option's text, and `generate`, the option the text names
    (its text, a leading '(b)' or a prefix)."""
    was_training = model.training
    model.eval()
    picks = [p for m, ps in EVAL_PICKS.items() if method in (m, "both") for p in ps]
    preds, hits = [], dict.fromkeys(picks, 0)
    start = time.perf_counter()
    for i, ex in enumerate(examples):
        rec = {"id": ex.id, "gold": ex.answer}
        if method in ("loglik", "both"):
            lps = option_logprobs(model, tok, fmt, ex)
            means = [total / max(1, count) for total, count in lps]
            rec["loglik"] = max(range(len(lps)), key=means.__getitem__)
            rec["loglik_sum"] = max(range(len(lps)), key=lambda j: lps[j][0])
        if method in ("generate", "both"):
            rec["generated"] = generate_answer(model, tok, fmt, ex)
            rec["generate"] = match_option(rec["generated"], ex.choices)
            rec["em"] = int(exact_match(rec["generated"], ex.answer_text))
        for pick in picks:
            hits[pick] += is_correct(rec, pick)
        preds.append(rec)
        if log and (i + 1) % 25 == 0:
            log(f"[eval] {i + 1}/{len(examples)} | {time.perf_counter() - start:.0f}s")
    if was_training:
        model.train()
    n = len(examples)
    return {"n": n, "predictions": preds, **{f"accuracy_{p}": hits[p] / n if n else 0.0 for p in picks}}


def is_correct(rec: dict, pick: str) -> bool:
    """Whether a prediction record's pick ('loglik', 'loglik_sum', 'generate' or 'em') is right."""
    return rec[pick] == 1 if pick == "em" else rec[pick] == rec["gold"]


def correct_string(result: dict, pick: str) -> str:
    """Per question, in order: '1' where the pick was right, else '0' (compact, for paired tests)."""
    return "".join("1" if is_correct(p, pick) else "0" for p in result["predictions"])
