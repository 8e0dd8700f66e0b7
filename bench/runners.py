"""One runner per runtime: answer a question greedily, timing prefill and decode separately.

Each runner's `answer(prompt)` returns the generated text and its timings; `option_logprobs` gives
per-option mean log-probabilities where the runtime exposes logits. Runners are created inside the
contestant's own process (see bench/run.py), with a fixed number of threads.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


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


def _stop_at(text: str, stops: list[str]) -> tuple[str, bool]:
    for s in stops:
        if s in text:
            return text.split(s)[0], True
    return text, False


class HFRunner:
    """transformers (torch) or optimum's ORTModel (ONNX): the same greedy loop over past_key_values, for
    decoder-only students and encoder-decoder (T5) ones (the question encoded once, the answer decoded)."""

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
                if _stop_at(self.tok.decode(new), stops)[1]:
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
        text, _ = _stop_at(self.tok.decode(new, skip_special_tokens=True), stops)
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


class LlamaCppRunner:
    def __init__(self, path: str, threads: int, n_ctx: int = 2048, chat: bool = False):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, logits_all=False, verbose=False)
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
        text, _ = _stop_at("".join(chunks), stops)
        prompt_tokens = len(self.llm.tokenize(prompt.encode(), add_bos=self.add_bos, special=True))
        return Timed(text, prompt_tokens, max(1, n), ttft or total, total)

    def option_logprobs(self, prompt: str, options: list[str]) -> list[float]:
        """Mean log-probability per option token after the prompt, on the same context that answers: the
        prompt is evaluated once, each option then feeds its tokens one at a time from the prompt's cache
        (a second context with logits at every position would hold n_ctx x vocabulary floats)."""
        import llama_cpp

        llm = self.llm
        vocab = llm.n_vocab()

        def last_logprobs() -> np.ndarray:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,)).astype(np.float64)
            return logits - np.logaddexp.reduce(logits)

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


class OpenAIRunner:
    """A teacher behind an OpenAI-compatible server: latency is what the client sees, streamed, so the time
    to the first token is measured, not set equal to the total."""

    def __init__(self, tcfg):
        from distill.teachers import OpenAITeacher

        self.teacher = OpenAITeacher(tcfg)

    def answer(self, prompt: str, max_new_tokens: int, stops: list[str]) -> Timed:
        import dataclasses

        from distill.prompts import TeacherPrompt

        t = self.teacher
        t.cfg = dataclasses.replace(t.cfg, max_new_tokens=max_new_tokens)
        start, ttft, pieces = time.perf_counter(), None, []
        for chunk in t.request(TeacherPrompt("q", [{"role": "user", "content": prompt}], prompt), stream=True):
            if not chunk.choices:  # a closing chunk that carries only usage
                continue
            piece = (chunk.choices[0].delta.content if t.chat else chunk.choices[0].text) or ""
            if piece:
                ttft = ttft if ttft is not None else time.perf_counter() - start
                pieces.append(piece)
        total = time.perf_counter() - start
        text, _ = _stop_at("".join(pieces), stops)
        # Servers stream about one token per chunk (llama.cpp, vLLM): the chunk count stands for the token count.
        return Timed(text, 0, max(1, len(pieces)), ttft if ttft is not None else total, total)
