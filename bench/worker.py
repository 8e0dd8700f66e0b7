"""One contestant in its own process: `python -m bench.worker SPEC.json`.

A separate process per contestant gives each its own peak-memory figure, and lets the parent
report a crash or a timeout for this contestant while the others still run.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

LOADED = "loaded"
"""Written in the contestant's folder once its model is loaded: bench.timeout_s counts from then."""


def parse_teacher_answer(text: str, choices: tuple[str, ...]) -> int | None:
    """A CoT answer: its last "the answer is (x)", else the option whose text it names last."""
    from distill.released import stated_answer

    stated = stated_answer(text)
    if stated is not None and stated < len(choices):
        return stated
    low, best, best_pos = text.lower(), None, -1
    for i, c in enumerate(choices):
        pos = low.rfind(c.lower())
        if c and pos > best_pos:
            best, best_pos = i, pos
    return best


def build_runner(spec: dict, threads: int, device: str = "cpu"):
    from bench.runners import OpenAIRunner
    from distill.inference import HFRunner, LlamaCppRunner

    kind = spec["kind"]
    if kind == "student-torch":
        import torch

        from distill.config import StudentConfig
        from distill.student import load_student

        torch.set_num_threads(threads)
        model, tok, _ = load_student(StudentConfig(model=spec["path"]))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        return HFRunner(model.to("cuda" if cuda else "cpu").eval(), tok)
    if kind == "student-onnx":
        import onnxruntime
        from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM
        from transformers import AutoConfig, AutoTokenizer

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        have_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if device == "cuda" and not have_cuda:
            raise RuntimeError("bench.device=cuda, but onnxruntime has no CUDAExecutionProvider: pip install "
                               "onnxruntime-gpu")
        provider = "CUDAExecutionProvider" if device == "cuda" or (device == "auto" and have_cuda) else "CPUExecutionProvider"
        seq2seq = getattr(AutoConfig.from_pretrained(spec["path"]), "is_encoder_decoder", False)
        ort_class = ORTModelForSeq2SeqLM if seq2seq else ORTModelForCausalLM
        return HFRunner(ort_class.from_pretrained(spec["path"], session_options=opts, provider=provider),
                        AutoTokenizer.from_pretrained(spec["path"]))
    if kind == "student-genai":
        from bench.runners import GenAIRunner

        return GenAIRunner(spec["path"], threads)
    if kind == "student-gguf":
        return LlamaCppRunner(spec["path"], threads, lora=spec.get("lora"))
    if kind == "teacher":
        from distill.config import TeacherConfig

        tcfg = TeacherConfig(**spec["teacher"])
        if tcfg.backend == "llama.cpp":
            from distill.models import resolve_gguf

            path = resolve_gguf(tcfg.model, f"teacher '{tcfg.name}' model:")
            runner = LlamaCppRunner(str(path), threads, n_ctx=tcfg.n_ctx)
            runner.chat = bool(runner.llm.metadata.get("tokenizer.chat_template")) if tcfg.chat is None else tcfg.chat
            return runner
        if tcfg.backend == "openai":
            return OpenAIRunner(tcfg)
        if tcfg.backend == "transformers":
            import torch

            from distill.models import load_causal_lm

            torch.set_num_threads(threads)
            model, tok, _ = load_causal_lm(tcfg.model, trust_remote_code=tcfg.trust_remote_code)
            return HFRunner(model.eval(), tok)
    raise ValueError(f"unknown contestant kind {kind}")


def main(spec_file: str) -> None:
    from distill.config import load_config
    from distill.data import load_dataset
    from distill.prompts import render_question
    from distill.progress import Progress, log
    from distill.student import PromptFormat, answer_is_right, match_option

    spec = json.loads(Path(spec_file).read_text())
    cfg = load_config(spec["config"])
    ds = load_dataset(cfg.data.name, cfg.data.path)
    questions = ds.split(cfg.data.test_split)
    if cfg.bench.limit is not None:
        questions = questions[: cfg.bench.limit]
    out = Path(spec["out"])
    student = spec["kind"].startswith("student")
    fmt = PromptFormat.load(Path(spec["prompt_format_dir"])) if student else None
    runner = build_runner(spec, cfg.bench.threads, cfg.bench.device)
    (out / LOADED).write_text(str(time.time()))  # bench.timeout_s counts from here
    loglik = hasattr(runner, "option_logprobs")

    def ask(ex):
        if student:
            return runner.answer(fmt.answer_prompt(ex), 32, ["\n"])
        return runner.answer(render_question(ex) + "\nAnswer: Let's think step by step.", spec["teacher"]["max_new_tokens"],
                             ["\n\nQ:"])

    for ex in questions[: cfg.bench.warmup]:
        ask(ex)
    progress = Progress(f"bench {spec['name']}", len(questions), log, unit="questions")
    with open(out / "predictions.jsonl", "w") as fh:
        for ex in questions:
            t = ask(ex)
            rec = {"id": ex.id, "gold": ex.answer, "generated": t.text,
                   "ttft_s": t.ttft_s, "total_s": t.total_s, "new_tokens": t.new_tokens, "prompt_tokens": t.prompt_tokens,
                   "decode_tok_s": t.decode_tok_s, "prompt_tok_s": t.prompt_tok_s}
            if ex.choices:
                rec["pred_option_match"] = match_option(t.text, ex.choices) if student else \
                    parse_teacher_answer(t.text, ex.choices)
            if student or not ex.choices:  # a teacher's chain of thought is not meant to be an option's text
                rec["em"] = int(answer_is_right(t.text, ex, first_line=student))
            if not ex.choices:
                rec["target"] = ex.target
            if loglik and ex.choices:
                prompt = fmt.answer_prompt(ex) if student else render_question(ex) + "\nAnswer:"
                scores = runner.option_logprobs(prompt, list(ex.choices))
                rec["pred_loglik"] = max(range(len(scores)), key=scores.__getitem__)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            progress.update(1, tokens=t.new_tokens)
    progress.done()
    (out / "worker.json").write_text(json.dumps({
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": cfg.bench.threads,
        "warmup": cfg.bench.warmup, "loglik": loglik, "pid": os.getpid(), "finished": time.time()}))


if __name__ == "__main__":
    main(sys.argv[1])
