"""Bench contestants whose runtimes distill does not use: an OpenAI-compatible teacher, an onnxruntime-genai student.

The other students' runtimes (torch, ONNX, llama.cpp) and their timed answers are in distill/inference.py;
every runner is created inside the contestant's own process (see bench/run.py), with a fixed number of
threads.
"""
from __future__ import annotations

import json
import time

from distill.inference import Timed, stop_at


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
        text, _ = stop_at("".join(pieces), stops)
        # Servers stream about one token per chunk (llama.cpp, vLLM): the chunk count stands for the token count.
        return Timed(text, 0, max(1, len(pieces)), ttft if ttft is not None else total, total)


class GenAIRunner:
    """A student exported with `--format genai`, answered by onnxruntime-genai's own generator, one question at a
    time as a device runs it (greedy, its KV cache, its tokenizer), timed per token."""

    def __init__(self, folder: str, threads: int):
        import onnxruntime_genai as og

        from export.genai import tokenizer

        config = og.Config(folder)
        config.clear_providers()  # CPU
        # bench gives every runtime the same thread count; genai_config.json's session options carry it.
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.og, self.model, self.folder = og, og.Model(config), folder
        self.tok = tokenizer(self.model)
        self.eos = set(int(i) for i in self.tok.eos_token_ids)

    def _generator(self, ids, max_length: int):
        import numpy as np

        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        gen = self.og.Generator(self.model, params)
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        return gen

    def answer(self, prompt: str, max_new_tokens: int, stops: list[str]) -> Timed:
        start = time.perf_counter()
        ids = [int(i) for i in self.tok.encode(prompt)]
        gen = self._generator(ids, len(ids) + max_new_tokens)
        stream, text, new, ttft = self.tok.create_stream(), "", 0, None
        while not gen.is_done():
            gen.generate_next_token()
            nxt = int(gen.get_next_tokens()[0])
            if ttft is None:
                ttft = time.perf_counter() - start
            if nxt in self.eos:
                break
            new += 1
            text += stream.decode(nxt)
            if stop_at(text, stops)[1]:
                break
        total = time.perf_counter() - start
        text, _ = stop_at(text, stops)
        return Timed(text, len(ids), max(1, new), ttft or total, total)

    def option_logprobs(self, prompt: str, options: list[str]) -> list[float]:
        """Mean log-probability per option token after the prompt: one pass over prompt + option each."""
        from distill.inference import log_softmax

        p_ids = [int(i) for i in self.tok.encode(prompt)]
        scores = []
        for opt in options:
            o_ids = self._option_ids(opt)
            gen = self._generator(p_ids + o_ids, len(p_ids) + len(o_ids) + 1)
            logits = gen.get_output("logits")
            logits = logits.reshape(-1, logits.shape[-1])[-(len(o_ids) + 1):-1]
            scores.append(sum(float(log_softmax(row)[t]) for row, t in zip(logits, o_ids)) / max(1, len(o_ids)))
        return scores

    def _option_ids(self, opt: str) -> list[int]:
        """The option's own tokens, without the special tokens `tokenizer` adds to prompts."""
        with_special = [int(i) for i in self.tok.encode(" " + opt)]
        bos = self.tok.bos_token_id
        return with_special[1:] if with_special and with_special[0] == bos else with_special
