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

import time
from dataclasses import dataclass
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
    scores, verified = _score(model, tok, prompts, options, max_tokens, progress, max_new_tokens)
    rest = [i for i, v in enumerate(verified) if v is None]  # `progress` counted them with their scores
    generated = answers(model, tok, [prompts[i] for i in rest], max_new_tokens, batch_size) if rest else []
    for i, text in zip(rest, generated):
        verified[i] = text
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
                sums, counts, _ = token_losses(model, mb, tok.pad_token_id)
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
            ids, mask = [], []
            for i in rows:
                n, fill = len(encoded[i]), longest - len(encoded[i])
                ids.append(encoded[i] + [pad] * fill if seq2seq else [pad] * fill + encoded[i])
                mask.append([1] * n + [0] * fill if seq2seq else [0] * fill + [1] * n)
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


# ---------------------------------------------------------------------------------------------
# Timed single answers (bench): the runtime's own greedy loop, prefill and decode timed apart.


@dataclass
class Timed:
    text: str
    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    """Time to first token: prompt processing plus the first decode step."""
    total_s: float

    @property
    def decode_tok_s(self) -> float:
        rest = self.total_s - self.ttft_s
        return (self.new_tokens - 1) / rest if self.new_tokens > 1 and rest > 0 else 0.0

    @property
    def prompt_tok_s(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ttft_s > 0 else 0.0


def stop_at(text: str, stops: list[str]) -> tuple[str, bool]:
    for s in stops:
        if s in text:
            return text.split(s)[0], True
    return text, False


class HFRunner:
    """transformers (torch) or optimum's ORTModel (ONNX), one question at a time as a device answers it:
    the same greedy loop over past_key_values, for decoder-only students and encoder-decoder (T5) ones
    (the question encoded once, the answer decoded)."""

    def __init__(self, model, tok):
        import inspect

        self.model, self.tok = model, tok
        self.device = getattr(model, "device", "cpu")  # torch on cuda, or onnxruntime's CUDA provider
        self.seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        # The prompt pass needs logits at its last position only; transformers models can skip the
        # vocabulary projection elsewhere (~20% of a SmolLM2 prompt pass on CPU). ONNX models take no such argument.
        takes = "logits_to_keep" in inspect.signature(model.forward).parameters and not self.seq2seq
        self._last_logits_only = {"logits_to_keep": 1} if takes else {}

    def _encode(self, ids, mask):
        """Seq2seq: the encoder's output for the question, in the form both torch and ORT models take."""
        from transformers.modeling_outputs import BaseModelOutput

        encoder = self.model.get_encoder() if hasattr(self.model, "get_encoder") else self.model.encoder
        return BaseModelOutput(last_hidden_state=encoder(input_ids=ids, attention_mask=mask).last_hidden_state)

    def _start(self):
        import torch

        return torch.tensor([[self.model.config.decoder_start_token_id]], device=self.device)

    def answer(self, prompt: str, max_new_tokens: int, stops: list[str]) -> Timed:
        import torch

        ids = self.tok(prompt, return_tensors="pt")["input_ids"].to(self.device)
        start = time.perf_counter()
        new: list[int] = []
        with torch.inference_mode():
            mask = torch.ones_like(ids)
            if self.seq2seq:
                enc = self._encode(ids, mask)
                out = self.model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=self._start(), use_cache=True)
            else:
                out = self.model(input_ids=ids, attention_mask=mask, use_cache=True, **self._last_logits_only)
            ttft = None
            for _ in range(max_new_tokens):
                nxt = int(out.logits[0, -1].argmax())
                if ttft is None:
                    ttft = time.perf_counter() - start
                if nxt == self.tok.eos_token_id:
                    break
                new.append(nxt)
                if stop_at(self.tok.decode(new), stops)[1]:
                    break
                step = torch.tensor([[nxt]], device=mask.device)
                if self.seq2seq:
                    out = self.model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=step,
                                     past_key_values=out.past_key_values, use_cache=True)
                else:
                    mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype, device=mask.device)], dim=1)
                    out = self.model(input_ids=step, attention_mask=mask, past_key_values=out.past_key_values,
                                     use_cache=True)
        total = time.perf_counter() - start
        text, _ = stop_at(self.tok.decode(new, skip_special_tokens=True), stops)
        return Timed(text, ids.shape[1], max(1, len(new)), ttft or total, total)

    def option_logprobs(self, prompt: str, options: list[str]) -> list[float]:
        """Mean log-probability per option token after the prompt (seq2seq: of the option as the decoder's
        target, the question encoded once)."""
        import torch

        scores = []
        p_ids = self.tok(prompt)["input_ids"]
        with torch.inference_mode():
            if self.seq2seq:
                ids = torch.tensor([p_ids], device=self.device)
                mask = torch.ones_like(ids)
                enc = self._encode(ids, mask)
            for opt in options:
                o_ids = self.tok(" " + opt, add_special_tokens=False)["input_ids"]
                if self.seq2seq:
                    dec = torch.cat([self._start(), torch.tensor([o_ids[:-1]], device=self.device, dtype=torch.long)], 1)
                    logits = self.model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec,
                                        use_cache=False).logits[0].float()
                    lp = torch.log_softmax(logits, -1)
                else:
                    ids = torch.tensor([p_ids + o_ids], device=self.device)
                    logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
                    lp = torch.log_softmax(logits[len(p_ids) - 1:-1], -1)
                targets = torch.tensor(o_ids, device=lp.device)
                scores.append(float(lp[torch.arange(len(o_ids), device=lp.device), targets].mean()))
        return scores


# ---------------------------------------------------------------------------------------------
# llama.cpp (GGUF): greedy answers of many prompts at once, option log-likelihood, timed answers.


def log_softmax(logits):
    """Max-shifted log-sum-exp over a vocabulary (numpy), in float64."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class LlamaCppRunner:
    """A GGUF model in llama.cpp: `answers` of many prompts (export's checks), `answer` of one, streamed
    and timed as a device runs it (bench), and `option_logprobs`."""

    def __init__(self, path: str, threads: int | None = None, n_ctx: int = 2048, chat: bool = False,
                 lora: str | None = None):
        from distill.llama_runtime import open_gguf

        self.llm = open_gguf(path, n_ctx=n_ctx, threads=threads, lora=lora)
        self.chat = chat
        self.add_bos = self.llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
        self.path, self.threads, self.n_ctx = path, threads, n_ctx

    def answer(self, prompt: str, max_new_tokens: int, stops: list[str]) -> Timed:
        start, ttft, chunks, n = time.perf_counter(), None, [], 0
        if self.chat:
            stream = self.llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_new_tokens,
                                                     temperature=0.0, stream=True)
            pieces = (c["choices"][0]["delta"].get("content") or "" for c in stream)
        else:
            stream = self.llm.create_completion(prompt, max_tokens=max_new_tokens, temperature=0.0, stream=True, stop=stops)
            pieces = (c["choices"][0]["text"] for c in stream)
        for piece in pieces:
            if ttft is None:
                ttft = time.perf_counter() - start
            chunks.append(piece)
            n += 1
        total = time.perf_counter() - start
        text, _ = stop_at("".join(chunks), stops)
        prompt_tokens = len(self.llm.tokenize(prompt.encode(), add_bos=self.add_bos, special=True))
        return Timed(text, prompt_tokens, max(1, n), ttft or total, total)

    def answers(self, prompts: Sequence[str], max_new_tokens: int = 32,
                progress: Callable[[int], None] | None = None) -> list[str]:
        """Greedy answer to each prompt, up to its first line break or `max_new_tokens`.

        One prompt at a time, not several sequences in one context: llama.cpp allows that (a sequence
        id per token, one KV-cache slot each), and it was tried (benchmarks/results/eval_speed.md): on
        the OBQA student's 4-bit file, answers are ~6 tokens after a ~110-token prompt, so the prompt
        pass is most of the time and batching the few decode steps saved nothing (0.15-0.17 s per
        question for 1, 4, 8 or 16 sequences on 2 AMD EPYC cores), while the larger cache's different
        reduction order changed 1 answer in 60."""
        out = []
        for p in prompts:
            r = self.llm.create_completion(p, max_tokens=max_new_tokens, temperature=0.0, stop=[LINE_BREAK])
            out.append(r["choices"][0]["text"].split(LINE_BREAK)[0])
            if progress:
                progress(1)
        return out

    def option_logprobs(self, prompt: str, options: list[str]) -> list[float]:
        """Mean log-probability per option token after the prompt, on the same context that answers: the
        prompt is evaluated once, each option then feeds its tokens one at a time from the prompt's cache
        (a second context with logits at every position would hold n_ctx x vocabulary floats)."""
        import numpy as np

        import llama_cpp

        llm = self.llm
        vocab = llm.n_vocab()

        def last_logprobs():
            return log_softmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,)))

        p_ids = llm.tokenize(prompt.encode(), add_bos=self.add_bos, special=True)
        llm.reset()
        llm.eval(p_ids)
        after_prompt = last_logprobs()
        scores = []
        for opt in options:
            o_ids = llm.tokenize((" " + opt).encode(), add_bos=False, special=False)
            llm.n_tokens = len(p_ids)  # back to the prompt: eval() drops the cache beyond it
            total, lp = 0.0, after_prompt
            for j, tok in enumerate(o_ids):
                total += float(lp[tok])
                if j + 1 < len(o_ids):
                    llm.eval([tok])
                    lp = last_logprobs()
            scores.append(total / max(1, len(o_ids)))
        return scores

    def close(self):
        self.llm.close()
