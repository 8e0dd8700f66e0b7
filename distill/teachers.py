"""One Teacher interface, four backends: llama.cpp (GGUF), transformers, OpenAI-compatible HTTP, files.

A teacher turns prompts into generations and names its own identity (what goes into the cache
key, so a different model never reuses another's rationales). `generate` yields each result as
soon as it is ready, so the caller can store it before the next one; a backend that fails part-way
has already handed over everything it finished.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Iterator, Protocol

from distill.config import TeacherConfig
from distill.errors import UserError, require
from distill.prompts import TeacherPrompt


@dataclass
class Generation:
    text: str
    finish_reason: str
    """'stop', 'length', or 'error: <why>' (an error becomes a rejected record, not a crash)."""
    completion_tokens: int
    seconds: float


class Teacher(Protocol):
    cfg: TeacherConfig

    def identity(self) -> str: ...

    def uses_chat(self) -> bool: ...

    def generate(self, prompts: list[TeacherPrompt]) -> Iterator[tuple[int, Generation]]: ...

    def close(self) -> None: ...


# Base models run on completion prompts; stop before they start writing the next question.
COMPLETION_STOPS = ["\n\nQ:", "\nQ:", "\n\n\n"]


# ---------------------------------------------------------------------------------------------


def llama_cpp_identity(path) -> str:
    from distill.models import file_identity

    return f"llama.cpp:{file_identity(path)}"


def openai_identity(cfg: TeacherConfig) -> str:
    return f"openai:{cfg.base_url.rstrip('/')}:{cfg.model}"


def planned_identity(cfg: TeacherConfig) -> tuple[str, bool] | None:
    """(identity, whether it is asked in chat form) of a teacher as it will be built, without loading it, so a
    dry run can look up the rationale cache; None where that needs the model itself (transformers)."""
    if cfg.backend == "llama.cpp":
        from distill.models import gguf_scalars, resolve_gguf

        path = resolve_gguf(cfg.model, f"teacher '{cfg.name}' model:")
        has_template = "tokenizer.chat_template" in gguf_scalars(path)
        return llama_cpp_identity(path), has_template if cfg.chat is None else cfg.chat
    if cfg.backend == "openai" and cfg.base_url:
        return openai_identity(cfg), True if cfg.chat is None else cfg.chat
    return None


class LlamaCppTeacher:
    """A GGUF file (or a packaged model name) through llama-cpp-python, in this process."""

    def __init__(self, cfg: TeacherConfig, threads: int | None = None, seed: int = 0):
        from distill.models import resolve_gguf

        from distill.llama_runtime import open_gguf

        self.cfg = cfg
        self.path = resolve_gguf(cfg.model, f"teacher '{cfg.name}' model:")
        self._identity = llama_cpp_identity(self.path)
        self.llm = open_gguf(self.path, n_ctx=cfg.n_ctx, threads=threads, seed=seed)
        has_template = bool(self.llm.metadata.get("tokenizer.chat_template"))
        self.chat = has_template if cfg.chat is None else cfg.chat
        if self.chat and not has_template:
            raise UserError(f"teacher '{cfg.name}': {self.path.name} has no chat template; set chat: false (plain "
                            "completion).")

    def identity(self) -> str:
        return self._identity

    def uses_chat(self) -> bool:
        return self.chat

    def generate(self, prompts):
        for i, p in enumerate(prompts):
            start = time.perf_counter()
            try:
                if self.chat:
                    out = self.llm.create_chat_completion(messages=p.messages, max_tokens=self.cfg.max_new_tokens,
                                                          temperature=self.cfg.temperature)
                    text = out["choices"][0]["message"]["content"] or ""
                else:
                    out = self.llm.create_completion(p.text, max_tokens=self.cfg.max_new_tokens,
                                                     temperature=self.cfg.temperature, stop=COMPLETION_STOPS)
                    text = out["choices"][0]["text"]
            except ValueError as exc:  # llama.cpp raises ValueError when the prompt exceeds n_ctx
                yield i, Generation("", f"error: {exc}", 0, time.perf_counter() - start)
                continue
            yield i, Generation(text, out["choices"][0].get("finish_reason") or "stop",
                                out.get("usage", {}).get("completion_tokens", 0), time.perf_counter() - start)

    def close(self):
        self.llm.close()


# ---------------------------------------------------------------------------------------------


class TransformersTeacher:
    """A local directory, hub id or packaged GGUF through transformers; batched, left-padded."""

    def __init__(self, cfg: TeacherConfig, threads: int | None = None, seed: int = 0):
        from distill.models import load_causal_lm

        self.cfg = cfg
        torch = require("torch")
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model, self.tok, self._identity = load_causal_lm(cfg.model, trust_remote_code=cfg.trust_remote_code)
        self.model.eval()
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        has_template = bool(getattr(self.tok, "chat_template", None))
        self.chat = has_template if cfg.chat is None else cfg.chat
        self.batch_size = max(1, cfg.concurrency)

    def identity(self) -> str:
        return f"transformers:{self._identity}"

    def uses_chat(self) -> bool:
        return self.chat

    def _text(self, p: TeacherPrompt) -> str:
        if self.chat:
            return self.tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
        return p.text

    def generate(self, prompts):
        import torch

        for lo in range(0, len(prompts), self.batch_size):
            batch = prompts[lo: lo + self.batch_size]
            start = time.perf_counter()
            enc = self.tok([self._text(p) for p in batch], return_tensors="pt", padding=True, add_special_tokens=not self.chat)
            do_sample = self.cfg.temperature > 0
            with torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=do_sample,
                                          temperature=self.cfg.temperature if do_sample else None, top_p=None, top_k=None,
                                          pad_token_id=self.tok.pad_token_id)
            seconds = (time.perf_counter() - start) / len(batch)
            new = out[:, enc["input_ids"].shape[1]:]
            for j, row in enumerate(new):
                ids = row.tolist()
                n = len(ids)
                while n and ids[n - 1] == self.tok.pad_token_id:
                    n -= 1
                text = self.tok.decode(ids[:n], skip_special_tokens=True)
                if not self.chat:
                    for stop in COMPLETION_STOPS:
                        text = text.split(stop)[0]
                finished = n < len(ids) or (n and ids[n - 1] == self.tok.eos_token_id)
                yield lo + j, Generation(text, "stop" if finished else "length", n, seconds)

    def close(self):
        pass


# ---------------------------------------------------------------------------------------------


class OpenAITeacher:
    """Any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, TGI): the path to big teachers.

    Through the maintained `openai` client: concurrent requests up to `concurrency`; 408/409/429/5xx
    answers, refused connections and timeouts are retried with exponential backoff (honouring
    Retry-After) up to RETRIES times; then the run stops with one clear sentence, after every finished
    rationale has been handed over.
    """

    RETRIES = 4

    def __init__(self, cfg: TeacherConfig, threads: int | None = None, seed: int = 0):
        openai = require("openai")
        self.cfg = cfg
        self.base = cfg.base_url.rstrip("/")
        key = None
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise UserError(f"teacher '{cfg.name}': the environment variable {cfg.api_key_env} (its API key) is "
                                "not set.")
        # The client insists on a key; servers without auth (vLLM, llama.cpp) ignore this placeholder.
        self.client = openai.OpenAI(base_url=self.base, api_key=key or "no-key", max_retries=self.RETRIES,
                                    timeout=cfg.timeout_s)
        self.chat = True if cfg.chat is None else cfg.chat
        self.seed = seed

    def identity(self) -> str:
        return openai_identity(self.cfg)

    def uses_chat(self) -> bool:
        return self.chat

    def request(self, p: TeacherPrompt, stream: bool = False):
        """The completion (or its stream of chunks), with the client's errors as one-sentence UserErrors."""
        import openai

        common = {"model": self.cfg.model, "max_tokens": self.cfg.max_new_tokens, "temperature": self.cfg.temperature,
                  "seed": self.seed, "stream": stream}
        where = f"{self.base}/{'chat/completions' if self.chat else 'completions'}"
        try:
            if self.chat:
                return self.client.chat.completions.create(messages=p.messages, **common)
            return self.client.completions.create(prompt=p.text, stop=COMPLETION_STOPS, **common)
        except openai.APITimeoutError:
            raise UserError(f"teacher '{self.cfg.name}': {self.base} gave no answer within {self.cfg.timeout_s:g}s "
                            f"({self.RETRIES + 1} tries; teachers.N.timeout_s); rationales already received are saved, "
                            "re-run to continue.") from None
        except openai.APIConnectionError as exc:
            raise UserError(f"teacher '{self.cfg.name}': cannot reach {self.base} ({exc.__cause__ or exc}); "
                            "is the server running?") from None
        except openai.APIStatusError as exc:
            detail = exc.response.text[:200].strip()
            raise UserError(f"teacher '{self.cfg.name}': {where} answered HTTP {exc.status_code} ({detail}).") from None

    def _one(self, p: TeacherPrompt) -> Generation:
        start = time.perf_counter()
        out = self.request(p)
        choice = out.choices[0]
        text = (choice.message.content or "") if self.chat else (choice.text or "")
        tokens = out.usage.completion_tokens if out.usage else 0
        return Generation(text, choice.finish_reason or "stop", tokens, time.perf_counter() - start)

    def generate(self, prompts):
        pool = ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency))
        pending = {}
        todo = iter(enumerate(prompts))
        try:
            for _ in range(max(1, self.cfg.concurrency)):
                nxt = next(todo, None)
                if nxt:
                    pending[pool.submit(self._one, nxt[1])] = nxt[0]
            error = None
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    if fut.exception() is not None:
                        error = error or fut.exception()
                        continue
                    yield i, fut.result()
                    if error is None:
                        nxt = next(todo, None)
                        if nxt:
                            pending[pool.submit(self._one, nxt[1])] = nxt[0]
            if error is not None:
                raise error
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self):
        pass


# ---------------------------------------------------------------------------------------------


class FilesTeacher:
    """Precomputed rationales: the paper's released ones (model: flan-t5-xl | llama-2-7b) or a JSONL
    file of {"example_id": ..., "text": ...}. Nothing is generated, so nothing is cached."""

    precomputed = True

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg

    def identity(self) -> str:
        return f"files:{self.cfg.model or self.cfg.name}"

    def uses_chat(self) -> bool:
        return False

    def lookup(self, dataset_path: str, split: str, examples) -> tuple[dict[str, str], list[str]]:
        """example id -> rationale text, and a list of entries that could not be used."""
        from pathlib import Path

        from distill.paper import PAPER_TEACHERS, load_paper_rationales

        source = self.cfg.model or self.cfg.name
        if source in PAPER_TEACHERS:
            parsed = load_paper_rationales(dataset_path, split, examples)
            if source not in parsed.records:
                raise UserError(f"teacher '{self.cfg.name}': the paper released no {source} rationales for this "
                                "dataset "
                                f"(it has: {', '.join(parsed.records)}).")
            return {r.example_id: r.text for r in parsed.records[source]}, parsed.unparsed
        path = Path(source)
        if not path.is_file():
            raise UserError(f"teacher '{self.cfg.name}': model '{source}' is neither a paper teacher "
                            f"({', '.join(PAPER_TEACHERS)}) nor a JSONL file of rationales.")
        from distill.data import read_jsonl

        out = {}
        for ln, row in read_jsonl(path):
            if "example_id" not in row or "text" not in row:
                raise UserError(f"{path} line {ln}: each rationale needs 'example_id' and 'text'.")
            out[str(row["example_id"])] = row["text"]
        return out, []

    def close(self):
        pass


def make_teacher(cfg: TeacherConfig, threads: int | None = None, seed: int = 0):
    if cfg.backend == "files":
        return FilesTeacher(cfg)
    cls = {"llama.cpp": LlamaCppTeacher, "transformers": TransformersTeacher, "openai": OpenAITeacher}[cfg.backend]
    return cls(cfg, threads=threads, seed=seed)

