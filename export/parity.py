"""Parity of an exported student against the torch model, on real prompts from its task.

Reported: max |logit difference| (what ONNX and GGUF f16 are held to), top-1 next-token agreement
and mean KL(torch || exported) over every position (what quantized GGUFs are held to), and whether
both runtimes tokenize each prompt to the same ids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _compare(ref: np.ndarray, got: np.ndarray) -> dict:
    # torch's log_softmax: numpy's logaddexp.reduce over a 49k vocabulary is ~100x slower.
    r, g = torch.from_numpy(np.ascontiguousarray(ref)).double(), torch.from_numpy(np.ascontiguousarray(got)).double()
    lp_ref, lp_got = torch.log_softmax(r, -1), torch.log_softmax(g, -1)
    kl = (lp_ref.exp() * (lp_ref - lp_got)).sum(-1)
    return {"max_abs_logit_diff": float((r - g).abs().max()), "top1_agree": (r.argmax(-1) == g.argmax(-1)).tolist(),
            "kl": kl.tolist()}


def summarize(per_prompt: list[dict], same_tokens: list[bool]) -> dict:
    top1 = [a for p in per_prompt for a in p["top1_agree"]]
    kl = [k for p in per_prompt for k in p["kl"]]
    return {"prompts": len(per_prompt), "positions": len(top1),
            "max_abs_logit_diff": max(p["max_abs_logit_diff"] for p in per_prompt),
            "top1_agreement": sum(top1) / len(top1), "mean_kl": float(np.mean(kl)),
            "tokenizer_round_trip": all(same_tokens), "tokenizer_mismatches": same_tokens.count(False)}


@torch.inference_mode()
def torch_logits(model, ids: list[int]) -> np.ndarray:
    return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def gguf_parity(model, tok, gguf_file, prompts: list[str], threads: int | None = None, lora: str | None = None) -> dict:
    """llama.cpp runs in a child process (`distill.llama_runtime.call`): a file that kills it is a one-sentence
    LlamaCrash here, and the export's files are kept. `lora`: a LoRA adapter GGUF applied on top."""
    import tempfile

    from distill.llama_runtime import call

    ids = [tok(p)["input_ids"] for p in prompts]
    with tempfile.TemporaryDirectory(prefix="tinyllm-parity-") as tmp:
        same = call("export.parity:gguf_logits", f"checking {Path(gguf_file).name} against torch",
                    path=str(gguf_file), prompts=prompts, ids=ids, out_dir=tmp, threads=threads, lora=lora)
        per = [_compare(torch_logits(model, i), np.load(Path(tmp) / f"{k}.npy")) for k, i in enumerate(ids)]
    return summarize(per, same)


def gguf_logits(path: str, prompts: list[str], ids: list[list[int]], out_dir: str, threads: int | None = None,
                lora: str | None = None) -> list[bool]:
    """(child process) llama.cpp's logits at every position of each prompt's torch token ids, one
    `<k>.npy` per prompt in `out_dir`; returns whether llama.cpp tokenizes each prompt to those ids."""
    from distill.llama_runtime import open_gguf

    longest = max(len(i) for i in ids)
    llm = open_gguf(path, n_ctx=max(512, longest + 8), threads=threads, logits_all=True, lora=lora)
    try:
        add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
        same = []
        for k, (p, i) in enumerate(zip(prompts, ids)):
            same.append(llm.tokenize(p.encode(), add_bos=add_bos, special=True) == i)
            llm.reset()
            llm.eval(i)
            np.save(Path(out_dir) / f"{k}.npy", np.asarray(llm.scores[: len(i)], dtype=np.float32))
    finally:
        llm.close()
    return same


def onnx_parity(model, tok, onnx_dir, prompts: list[str]) -> dict:
    from distill.errors import require

    require("optimum.onnxruntime", "optimum-onnx[onnxruntime]")
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    ort = ORTModelForCausalLM.from_pretrained(str(onnx_dir))
    shipped_tok = AutoTokenizer.from_pretrained(str(onnx_dir))
    per, same = [], []
    for p in prompts:
        ids = tok(p)["input_ids"]
        same.append(shipped_tok(p)["input_ids"] == ids)
        t = torch.tensor([ids])
        got = ort(input_ids=t, attention_mask=torch.ones_like(t)).logits[0].float().numpy()
        per.append(_compare(torch_logits(model, ids), got))
    return summarize(per, same)


def onnx_seq2seq_parity(model, tok, onnx_dir, prompts: list[str], max_new_tokens: int = 16) -> dict:
    """Encoder-decoder (T5) students: logits along torch's own greedy answer, and the generated text."""
    from distill.errors import require

    require("optimum.onnxruntime", "optimum-onnx[onnxruntime]")
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from transformers import AutoTokenizer

    ort = ORTModelForSeq2SeqLM.from_pretrained(str(onnx_dir))
    shipped_tok = AutoTokenizer.from_pretrained(str(onnx_dir))
    per, same, texts_equal = [], [], []
    with torch.inference_mode():
        for p in prompts:
            enc = tok(p, return_tensors="pt")
            same.append(shipped_tok(p)["input_ids"] == enc["input_ids"][0].tolist())
            ref_ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            got_ids = ort.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            texts_equal.append(tok.decode(ref_ids[0], skip_special_tokens=True) == tok.decode(got_ids[0], skip_special_tokens=True))
            dec = ref_ids[:, :-1] if ref_ids.shape[1] > 1 else ref_ids
            ref = model(**enc, decoder_input_ids=dec).logits[0].float().numpy()
            got = ort(**enc, decoder_input_ids=dec).logits[0].float().numpy()
            per.append(_compare(ref, got))
    out = summarize(per, same)
    out["generation_match"] = sum(texts_equal) / len(texts_equal)
    return out


def genai_parity(model, tok, genai_dir, prompts: list[str]) -> dict:
    """onnxruntime-genai's logits along each prompt's torch token ids, and whether its own tokenizer (from the
    folder's tokenizer.json, what a device uses) gives those ids."""
    from export.genai import _model, genai_logits, tokenizer

    shipped_tok = tokenizer(_model(Path(genai_dir)))
    per, same = [], []
    for p in prompts:
        ids = tok(p)["input_ids"]
        same.append([int(i) for i in shipped_tok.encode(p)] == ids)
        per.append(_compare(torch_logits(model, ids), genai_logits(Path(genai_dir), ids)))
    return summarize(per, same)
