"""Scoring a student on multiple-choice questions: option log-likelihood and greedy generation.

Log-likelihood picks by mean (and, beside it, summed) log-probability per option token; generation is
scored by exact match of the gold option's text (the paper's metric) and by the option it names."""
from __future__ import annotations

from distill import inference
from distill.data import Example
from distill.progress import Progress
from distill.errors import UserError
from distill.student import PromptFormat, answer_is_right, match_option

# The metrics, one name each, everywhere (evaluation, bench, reports, MLflow): `em`, exact match (the
# generated first line is the gold option's text: the paper's metric); `option_match`, the generated text
# names the gold option (its text, a leading '(b)' or a prefix: more lenient); `loglik`, the option with
# the highest mean log-probability per token; `loglik_sum`, by summed log-probability.
EVAL_PICKS = {"loglik": ("loglik", "loglik_sum"), "generate": ("option_match", "em")}


def evaluate(model, tok, fmt: PromptFormat, examples: list[Example], method: str = "both", log=None) -> dict:
    """Accuracy by option log-likelihood and/or generation; per-question predictions included.

    The log-likelihood pick (`loglik`) normalises by option length (mean log-prob per token);
    `loglik_sum`, the pick by summed log-prob, is recorded beside it so the effect of the
    normalisation can be read off the same run. Generation is scored twice: `em`, the paper's exact
    match of the generated text to the gold option's text, and `option_match`, the option the text names
    (its text, a leading '(b)' or a prefix); free-form questions by `em` only, their final answer against
    the gold one. Questions are asked in batches (distill/inference.py)."""
    check_method(examples, method)
    was_training = model.training
    model.eval()
    free_form = not any(ex.choices for ex in examples)
    picks = [p for m, ps in EVAL_PICKS.items() if method in (m, "both") for p in ps
             if not (free_form and p == "option_match")]
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
            if ex.choices:
                rec["option_match"] = match_option(text, ex.choices)
            else:
                rec["target"] = ex.target
            rec["em"] = int(answer_is_right(text, ex))
    if was_training:
        model.train()
    n = len(examples)
    return {"n": n, "predictions": preds,
            **{f"accuracy_{p}": sum(is_correct(r, p) for r in preds) / n if n else 0.0 for p in picks}}


def _quiet(_: str) -> None:
    pass


def check_method(examples: list[Example], method: str) -> None:
    """Option log-likelihood needs options: free-form questions (GSM8K, SVAMP) are scored by generation."""
    if method in ("loglik", "both") and any(not ex.choices for ex in examples):
        raise UserError(f"train.eval_method={method} scores the options by log-likelihood, and these questions are "
                        "free-form (no options); set train.eval_method=generate (scored by the final answer).")


def is_correct(rec: dict, pick: str) -> bool:
    """Whether a prediction record's pick ('loglik', 'loglik_sum', 'option_match' or 'em') is right."""
    return rec[pick] == 1 if pick == "em" else rec[pick] == rec["gold"]


def correct_string(result: dict, pick: str) -> str:
    """Per question, in order: '1' where the pick was right, else '0' (compact, for paired tests)."""
    return "".join("1" if is_correct(p, pick) else "0" for p in result["predictions"])
