"""A Gemma 3 student through GGUF: the packaged Gemma 3 270M (converted to transformers once), written as an
f16 GGUF by `export.gguf.write_f16`, quantized by llama.cpp, each form's logits against torch.

    .venv/bin/python benchmarks/gemma3_gguf_parity.py --prompts 20

Prompts: the demo test questions in the student's answer format with their gold answer (as export's parity
check uses them). Reported per form: top-1 next-token agreement and mean KL(torch || GGUF) over every
position, max |logit difference|, whether llama.cpp tokenizes every prompt to the same ids, file size.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from distill.llama_runtime import cpu_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gemma3_gguf_parity.json"))
    args = ap.parse_args()
    from distill.data import load_dataset
    from distill.models import cache_root, load_causal_lm
    from distill.student import PromptFormat
    from export import parity
    from export.gguf import quantize, write_f16

    model, tok, identity = load_causal_lm("gemma3-270m")
    model.eval()
    folder = next(d for d in (cache_root() / "hf").iterdir() if d.name.startswith("gemma-3-270m"))
    fmt = PromptFormat(task_position="after")
    prompts = [fmt.answer_prompt(ex) + fmt.answer_target(ex) for ex in load_dataset("demo").splits["test"][: args.prompts]]
    work = Path(tempfile.mkdtemp(prefix="tinyllm-gemma-"))
    f16 = work / "gemma-f16.gguf"
    write_f16(folder, f16)
    result = {"model": f"packaged gemma3-270m ({identity}), weights dequantized from the shipped Q4_K_M",
              "prompts": len(prompts), "hardware": cpu_model(), "date": time.strftime("%Y-%m-%d"), "forms": {}}
    for quant in ("f16", "q8_0", "q4_k_m"):
        path = f16 if quant == "f16" else work / f"gemma-{quant}.gguf"
        if quant != "f16":
            quantize(f16, path, quant)
        r = parity.gguf_parity(model, tok, path, prompts)
        result["forms"][quant] = {k: r[k] for k in ("positions", "top1_agreement", "mean_kl", "max_abs_logit_diff",
                                                      "tokenizer_round_trip")} | {"size_bytes": path.stat().st_size}
        print(quant, json.dumps(result["forms"][quant]), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
