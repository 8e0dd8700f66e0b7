"""The bench's torch contestant against transformers' `generate()`: decode speed on the same model and prompts.

    .venv/bin/python benchmarks/torch_decode.py --questions 12 --threads 2

The packaged SmolLM2-135M-Instruct (fp32) answers the demo set's answer prompts greedily, 32 new tokens
each (the untrained instruct model rarely stops earlier). Decode speed excludes the prompt pass:
- bench runner (`distill.inference.HFRunner`): (new tokens - 1) / (total - time to first token), per question;
- `generate()`: 31 / (time for 32 new tokens - time for 1 new token), per question.
The two alternate question by question, so a change in machine load hits both. Reported: the median over
questions of each, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from distill.llama_runtime import cpu_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from distill.inference import HFRunner
    from distill.config import StudentConfig
    from distill.data import load_dataset
    from distill.student import PromptFormat, load_student

    torch.set_num_threads(args.threads)
    model, tok, _ = load_student(StudentConfig(model="smollm2-135m-instruct"))
    model.eval()
    fmt = PromptFormat(task_position="after")
    prompts = [fmt.answer_prompt(ex) for ex in load_dataset("demo").splits["test"][: args.questions + 1]]
    runner = HFRunner(model, tok)
    eos = tok.eos_token_id
    tok.eos_token_id = None  # both run the full 32 tokens

    def generate_s(prompt: str, n: int) -> float:
        enc = tok(prompt, return_tensors="pt")
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=eos)
        return time.perf_counter() - start

    runner.answer(prompts[0], 4, [])  # warm-up, not timed
    generate_s(prompts[0], 4)
    ours, theirs = [], []
    for p in prompts[1:]:
        t = runner.answer(p, 32, [])
        ours.append((t.new_tokens - 1) / (t.total_s - t.ttft_s))
        theirs.append(31 / (generate_s(p, 32) - generate_s(p, 1)))
    result = {"model": "smollm2-135m-instruct fp32", "questions": len(ours), "threads": args.threads,
              "new_tokens": 32, "runner_decode_tok_s_median": round(statistics.median(ours), 2),
              "generate_decode_tok_s_median": round(statistics.median(theirs), 2),
              "ratio": round(statistics.median(ours) / statistics.median(theirs), 3),
              "hardware": cpu_model(), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
