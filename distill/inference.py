"""Asking a student questions: option log-likelihood and greedy answers, many questions at a time.

Torch (`option_logprobs`, `answers`):
- Option log-likelihood: a question's options share its prompt — decoder-only students pack them into
  one row (prompt tokens once, then each option attending to the prompt and itself, positions
  restarting after the prompt: the computation of reusing the prompt's KV cache, in one forward), and
  rows of several questions go through the model together, up to `max_tokens` padded tokens.
- Answers: greedy, in batches of prompts of similar length, left-padded for decoder-only students,
  with a KV cache; each row stops on its own at the end-of-sequence token or at the first line break
  (everything scored reads the first line only), the batch when every row has stopped.
Batching changes nothing but rounding: padded positions are masked out, so a pick can differ from
one-question-at-a-time only where two options (or two next tokens) tie to within float error.

Importing this module does not import torch (bench's GGUF and ONNX workers use its llama.cpp part).
"""
from __future__ import annotations

from typing import Callable, Sequence

LINE_BREAK = "\n"

# ---------------------------------------------------------------------------------------------
# Torch: option log-likelihood.


def option_logprobs(model, tok, prompts: Sequence[str], options: Sequence[Sequence[str]], max_tokens: int = 4096,
                    progress: Callable[[int], None] | None = None) -> list[list[tuple[float, int]]]:
    """Per question, per option: (summed log-probability of the option's tokens after its prompt, their
    count). The option is scored as " " + its text, without the end-of-sequence token. `progress` is
    called with the number of questions each forward pass finished."""
    return _score(model, tok, prompts, options, max_tokens, progress, None)[0]


def scores_and_answers(model, tok, prompts: Sequence[str], options: Sequence[Sequence[str]], max_new_tokens: int = 32,
                       max_tokens: int = 4096, batch_size: int = 16, progress: Callable[[int], None] | None = None
                       ) -> tuple[list[list[tuple[float, int]]], list[str]]:
    """`option_logprobs` and `answers` of the same questions, sharing their work. The log-likelihood pass
    already holds the student's next-token logits along every option, so it checks each option as a draft
    of the greedy answer (speculative decoding with the options as drafts): where greedy decoding would
    write an option's tokens and then stop (end of sequence or a line break), that option's text *is* the
    greedy answer. Only the questions no option verifies are generated."""
    scores, verified = _score(model, tok, prompts, options, max_tokens, None, max_new_tokens)
    if progress:
        progress(0)
    rest = [i for i, v in enumerate(verified) if v is None]
    generated = answers(model, tok, [prompts[i] for i in rest], max_new_tokens, batch_size) if rest else []
    for i, text in zip(rest, generated):
        verified[i] = text
    if progress:
        progress(len(prompts))
    return scores, verified


def _score(model, tok, prompts, options, max_tokens, progress, draft_limit):
    """(scores, per question the greedy answer an option verified or None). `draft_limit`: the longest
    answer (in tokens) a draft may stand for; None: verify nothing."""
    import torch

    from distill.batching import (_pack_size, can_share, encode, fits_window, micro_batches, pack,
                                  packed_target_logits, token_losses)
    from distill.student import is_seq2seq

    seq2seq = is_seq2seq(model)
    where, per_question = {}, []  # id(sample) -> (question, option)
    for q, (prompt, opts) in enumerate(zip(prompts, options)):
        samples = [encode(tok, prompt, " " + c, "answer", seq2seq, 4096) for c in opts]
        for j, s in enumerate(samples):
            s.group = q
            where[id(s)] = (q, j)
        per_question.append(samples)
    scores: list[list] = [[None] * len(samples) for samples in per_question]
    verified: list[str | None] = [None] * len(per_question)
    left = [len(samples) for samples in per_question]

    def finish(s, total: float, count: int) -> int:
        q, j = where[id(s)]
        scores[q][j] = (total, count)
        left[q] -= 1
        return int(left[q] == 0)

    packs = [pack(samples) for samples in per_question] if can_share(model) else None
    with torch.inference_mode():
        if packs is not None and fits_window(model, packs):
            stops = _StopTokens(tok, model)
            for mb in micro_batches(packs, max_tokens, size=_pack_size):
                logits, labels, owner = packed_target_logits(model, mb, tok.pad_token_id)
                lp = torch.log_softmax(logits.float(), -1).gather(1, labels[:, None])[:, 0].tolist()
                best, target = logits.argmax(-1).tolist(), labels.tolist()
                by_sample: dict[int, list[int]] = {}
                for k, o in enumerate(owner.tolist()):
                    by_sample.setdefault(o, []).append(k)
                finished = 0
                for o, s in enumerate(x for p in mb for x in p.samples):
                    ks = by_sample.get(o, [])
                    option, eos = ks[:-1], ks[-1:]  # the last target is the end-of-sequence token: not scored
                    finished += finish(s, sum(lp[k] for k in option), len(option))
                    q = where[id(s)][0]
                    if (draft_limit is not None and verified[q] is None and eos and len(option) <= draft_limit
                            and all(best[k] == target[k] and not stops(target[k]) for k in option)
                            and stops(best[eos[0]])):
                        verified[q] = tok.decode([target[k] for k in option],
                                                 skip_special_tokens=True).split(LINE_BREAK)[0]
                if progress:
                    progress(finished)
        else:  # one row per option: encoder-decoder students, attention without 4D masks, rows past a window
            for samples in per_question:
                for s in samples:  # score the option text only, not the end-of-sequence token
                    s.labels = s.labels[:-1] if seq2seq else s.labels[:-1] + [-100]
            for mb in micro_batches([s for samples in per_question for s in samples], max_tokens):
                sums, counts = token_losses(model, mb, tok.pad_token_id)
                finished = sum(finish(s, -float(t), int(c)) for s, t, c in zip(mb, sums.tolist(), counts.tolist()))
                if progress:
                    progress(finished)
    return scores, verified


class _StopTokens:
    """Whether greedy decoding stops at a token and adds nothing of it to the answer: an end-of-sequence
    token that decoding drops (a special token), or a token whose text starts with a line break (the
    answer is its first line)."""

    def __init__(self, tok, model):
        self.eos, self.tok, self.seen = set(eos_ids(tok, model)), tok, {}

    def __call__(self, token: int) -> bool:
        if token not in self.seen:
            self.seen[token] = ((token in self.eos and self.tok.decode([token], skip_special_tokens=True) == "")
                                or self.tok.decode([token]).startswith(LINE_BREAK))
        return self.seen[token]


def pick(scores: list[tuple[float, int]]) -> tuple[int, int]:
    """(pick by mean log-probability per token, pick by summed log-probability)."""
    means = [total / max(1, count) for total, count in scores]
    return (max(range(len(scores)), key=means.__getitem__), max(range(len(scores)), key=lambda j: scores[j][0]))


# ---------------------------------------------------------------------------------------------
# Torch: greedy answers.


def eos_ids(tok, model) -> list[int]:
    """The tokens greedy answers end at: the tokenizer's end-of-sequence token (the one training puts
    after every target) and any the model's generation config names."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra = eos if isinstance(eos, list) else [eos] if eos is not None else []
    return sorted({tok.eos_token_id, *extra} - {None})


class _StopAtLineBreak:
    """Per row: stop once the newest token holds a line break (the end-of-sequence token is
    generate's own stop). Decodes one token per row per step; what a token decodes to is cached."""

    def __init__(self, tok, prompt_len: int):
        self.tok, self.prompt_len, self.breaks = tok, prompt_len, {}

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if input_ids.shape[1] <= self.prompt_len:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for t in set(last) - self.breaks.keys():
            self.breaks[t] = LINE_BREAK in self.tok.decode([t])
        return torch.tensor([self.breaks[t] for t in last], dtype=torch.bool, device=input_ids.device)


def answers(model, tok, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 16,
            progress: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answer to each prompt, up to its first line break (kept out of the text) or
    `max_new_tokens`; special tokens dropped."""
    import torch
    from transformers import StoppingCriteriaList

    from distill.student import is_seq2seq

    seq2seq = is_seq2seq(model)
    device = next(model.parameters()).device
    encoded = [tok(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # similar lengths pad little
    out = [""] * len(prompts)
    pad = tok.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            longest = max(len(encoded[i]) for i in rows)
            # decoder-only students continue the prompt, so it is padded on the left; an encoder reads
            # its input with the padding on the right, as in training
            ids = [([pad] * (longest - len(encoded[i])) + encoded[i]) if not seq2seq
                   else encoded[i] + [pad] * (longest - len(encoded[i])) for i in rows]
            mask = [([0] * (longest - len(encoded[i])) + [1] * len(encoded[i])) if not seq2seq
                    else [1] * len(encoded[i]) + [0] * (longest - len(encoded[i])) for i in rows]
            ids_t, mask_t = torch.tensor(ids, device=device), torch.tensor(mask, device=device)
            prompt_len = 1 if seq2seq else longest  # seq2seq output starts with the decoder start token
            gen = model.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad, eos_token_id=eos_ids(tok, model),
                                 stopping_criteria=StoppingCriteriaList([_StopAtLineBreak(tok, prompt_len)]))
            new = gen[:, prompt_len:] if not seq2seq else gen
            for i, row in zip(rows, new.tolist()):
                out[i] = tok.decode(row, skip_special_tokens=True).split(LINE_BREAK)[0]
            if progress:
                progress(len(rows))
    return out
