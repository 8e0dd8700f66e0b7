"""Scoring a student on multiple-choice questions: option log-likelihood and greedy generation.

Log-likelihood picks by mean (and, beside it, summed) log-probability per option token; generation is
scored by exact match of the gold option's text (the paper's metric) and by the option it names."""
from __future__ import annotations

from distill import inference
from distill.data import Example
from distill.progress import Progress
from distill.student import PromptFormat, exact_match, match_option

EVAL_PICKS = {"loglik": ("loglik", "loglik_sum"), "generate": ("generate", "em")}


def evaluate(model, tok, fmt: PromptFormat, examples: list[Example], method: str = "both", log=None) -> dict:
    """Accuracy by option log-likelihood and/or generation; per-question predictions included.

    The log-likelihood pick (`loglik`) normalises by option length (mean log-prob per token);
    `loglik_sum`, the pick by summed log-prob, is recorded beside it so the effect of the
    normalisation can be read off the same run. Generation is scored twice: `em`, the paper's exact
    match of the generated text to the gold option's text, and `generate`, the option the text names
    (its text, a leading '(b)' or a prefix). Questions are asked in batches (distill/inference.py)."""
    was_training = model.training
    model.eval()
    picks = [p for m, ps in EVAL_PICKS.items() if method in (m, "both") for p in ps]
    prompts = [fmt.answer_prompt(ex) for ex in examples]
    preds = [{"id": ex.id, "gold": ex.answer} for ex in examples]
    if method in ("loglik", "both"):
        progress = Progress("eval", len(examples), log or _quiet, every_s=30)
        options = [ex.choices for ex in examples]
        if method == "both":
            scores, texts = inference.scores_and_answers(model, tok, prompts, options, progress=progress.update)
        else:
            scores, texts = inference.option_logprobs(model, tok, prompts, options, progress=progress.update), None
        for rec, s in zip(preds, scores):
            rec["loglik"], rec["loglik_sum"] = inference.pick(s)
    else:
        progress = Progress("eval generate", len(examples), log or _quiet, every_s=30)
        texts = inference.answers(model, tok, prompts, progress=progress.update)
    if texts is not None:
        for rec, ex, text in zip(preds, examples, texts):
            rec["generated"] = text
            rec["generate"] = match_option(text, ex.choices)
            rec["em"] = int(exact_match(text, ex.answer_text))
    if was_training:
        model.train()
    n = len(examples)
    return {"n": n, "predictions": preds,
            **{f"accuracy_{p}": sum(is_correct(r, p) for r in preds) / n if n else 0.0 for p in picks}}


def _quiet(_: str) -> None:
    pass


def is_correct(rec: dict, pick: str) -> bool:
    """Whether a prediction record's pick ('loglik', 'loglik_sum', 'generate' or 'em') is right."""
    return rec[pick] == 1 if pick == "em" else rec[pick] == rec["gold"]


def correct_string(result: dict, pick: str) -> str:
    """Per question, in order: '1' where the pick was right, else '0' (compact, for paired tests)."""
    return "".join("1" if is_correct(p, pick) else "0" for p in result["predictions"])
