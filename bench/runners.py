"""A teacher behind an OpenAI-compatible server as a bench contestant.

The students' runtimes (torch, ONNX, llama.cpp) and their timed answers are in distill/inference.py;
every runner is created inside the contestant's own process (see bench/run.py), with a fixed number of
threads.
"""
from __future__ import annotations

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
