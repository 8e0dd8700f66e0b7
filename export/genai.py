"""The student as an onnxruntime-genai model: ONNX Runtime's on-device runtime and its model builder.

The builder (`python -m onnxruntime_genai.models.builder`) writes one fused ONNX graph (GroupQueryAttention,
SkipLayerNorm, weight-only MatMulNBits at int4/int8) and a `genai_config.json` that onnxruntime-genai's
`og.Model(folder)` loads on CPU, mobile and web. It runs in a child process: it prints a line per tensor and
its own errors, which go to export.log.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from distill.errors import UserError, require

PRECISION = {"none": "fp32", "int8": "int8", "int4": "int4"}
"""--quant for --format genai and the builder's --precision it maps to."""
ACCURACY_LEVEL = 4
"""MatMulNBits' compute type for int4/int8: activations quantized to int8 per block (the builder's CPU default,
stated so a later default cannot change what was measured)."""
BUILDER_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                         "PhiForCausalLM", "Phi3ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
                         "GemmaForCausalLM", "GraniteForCausalLM", "OlmoForCausalLM", "NemotronForCausalLM")
"""Decoder-only architectures onnxruntime-genai 0.15's builder converts (a subset of its list: the ones a TinyLLM
student can be); encoder-decoder students (T5) are not among them."""


def check_supported(hf_cfg: dict) -> None:
    arch = (hf_cfg.get("architectures") or ["?"])[0]
    if hf_cfg.get("is_encoder_decoder") or arch not in BUILDER_ARCHITECTURES:
        raise UserError(f"--format genai: onnxruntime-genai's model builder does not convert {arch} students; use "
                        f"--format onnx for it (optimum's exporter), or a decoder-only student "
                        f"({', '.join(BUILDER_ARCHITECTURES[:4])}, ...).")


ALGOS = ("default", "rtn", "k_quant")
MIXED_SELECTORS = ("last_matmul", "mixed_layers")


def quant_options(quant: str, algo: str = "default", mixed: str = "") -> list[str]:
    """The builder's extra options for export.genai_algo and export.genai_mixed_precision (checked here, so a
    typo is one sentence before the builder runs, not its traceback)."""
    if algo not in ALGOS:
        raise UserError(f"export.genai_algo={algo} is not one of {', '.join(ALGOS)}; e.g. export.genai_algo=k_quant.")
    pairs = [p.strip() for p in mixed.split(",") if p.strip()]
    for p in pairs:
        sel, _, kind = p.partition(":")
        if sel not in MIXED_SELECTORS or kind not in ("int4", "int8"):
            raise UserError(f"export.genai_mixed_precision: '{p}' is not selector:type with a selector among "
                            f"{', '.join(MIXED_SELECTORS)} and a type int4 or int8; e.g. "
                            "export.genai_mixed_precision=last_matmul:int8.")
    if quant == "none" and (algo != "default" or pairs):
        raise UserError("export.genai_algo and export.genai_mixed_precision apply to --quant int4 or int8; with "
                        "--quant none (fp32) nothing is quantized, so leave them at their defaults.")
    return ([f"algo_config={algo}"] if algo != "default" else []) + (
        [f"matmul_mixed_precision={','.join(pairs)}"] if pairs else [])


def export_genai(student: Path, out: Path, quant: str, log_file: Path | None = None, algo: str = "default",
                 mixed: str = "") -> dict:
    """Run the builder on the student folder; the prompt format travels with the model."""
    require("onnxruntime_genai", "onnxruntime-genai")
    from distill.student import PromptFormat

    hf_cfg = json.loads((student / "config.json").read_text())
    check_supported(hf_cfg)
    extra = quant_options(quant, algo, mixed)
    with tempfile.TemporaryDirectory(prefix="tinyllm-genai-") as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(student.resolve()), "-o",
               str(out.resolve()), "-p", PRECISION[quant], "-e", "cpu", "-c", cache,
               "--extra_options", "hf_token=false"]
        if quant != "none":
            cmd += [f"accuracy_level={ACCURACY_LEVEL}", *extra]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=cache)
    text = proc.stdout + proc.stderr
    if log_file is not None:
        with open(log_file, "a") as fh:
            fh.write(" ".join(cmd) + "\n" + text)
    else:
        sys.stderr.write(text)
    if proc.returncode != 0 or not (out / "genai_config.json").exists():
        last = [line for line in text.strip().splitlines() if line.strip()][-1:] or ["no output"]
        raise UserError(f"onnxruntime-genai's model builder failed on {student} (exit {proc.returncode}: "
                        f"{last[0][:300]}); its full output is in {log_file or 'the lines above'}.")
    PromptFormat.load(student).save(out)
    fixed = clean_byte_level_tokenizer(student, out)
    info = {"precision": PRECISION[quant], "files": sorted(p.name for p in out.glob("*.onnx")),
            **({"algo": algo, "mixed_precision": mixed} if quant != "none" else {})}
    if hf_cfg.get("vocab_size") == hf_cfg.get("intermediate_size"):
        # Seen with onnxruntime-genai 0.15.2: a random llama with vocab 512 = intermediate 512 came out with wrong
        # logits even in fp32 (max diff 21 on logits of 15), while intermediate 768 or 1536 matched to 1e-4.
        info["warning"] = ("vocab_size equals intermediate_size; onnxruntime-genai 0.15's builder was seen to "
                           "mis-convert such a model, so trust the parity check over the file")
    if fixed:
        info["tokenizer"] = fixed
    return info


def clean_byte_level_tokenizer(student: Path, out: Path) -> str | None:
    """A byte-level BPE tokenizer that also says `byte_fallback: true` and decodes SentencePiece-style (what
    transformers' own GGUF loading of SmolLM2 saves) makes onnxruntime-genai's tokenizer emit -1 for every
    byte-level piece; such a tokenizer never falls back (its alphabet covers every byte), so the shipped copy
    is written as plain byte-level BPE. The parity check compares the result with the student's ids."""
    from export.gguf import tokenizer_kind

    f = out / "tokenizer.json"
    if not f.exists():
        return None
    tok_json = json.loads(f.read_text())
    if (tok_json.get("model") or {}).get("type") != "BPE":
        return None
    try:
        kind = tokenizer_kind(student, tok_json)
    except UserError:
        return None
    decoder = tok_json.get("decoder") or {}
    if kind != "gpt2" or not (tok_json["model"].get("byte_fallback") or decoder.get("type") != "ByteLevel"):
        return None
    tok_json["model"]["byte_fallback"] = False
    tok_json["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    f.write_text(json.dumps(tok_json, ensure_ascii=False))
    return "byte-level BPE written without byte_fallback and SentencePiece decoder steps (onnxruntime-genai read them as SentencePiece)"


def tokenizer(model):
    """onnxruntime-genai's tokenizer of a loaded og.Model, adding the special tokens the student's own
    tokenizer adds (its post-processor's BOS); onnxruntime-genai adds none unless told."""
    import onnxruntime_genai as og

    tok = og.Tokenizer(model)
    tok.update_options(add_special_tokens="true")
    return tok


def genai_logits(folder: Path, ids: list[int]) -> np.ndarray:
    """Logits at every position of `ids`, from one prompt pass of onnxruntime-genai's generator."""
    import onnxruntime_genai as og

    model = _model(folder)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray([ids], dtype=np.int32))
    logits = np.asarray(gen.get_output("logits"), dtype=np.float32)
    return logits.reshape(-1, logits.shape[-1])[-len(ids):]


_MODELS: dict[str, object] = {}


def _model(folder: Path):
    """One og.Model per folder in this process (parity asks for its tokenizer and logits many times)."""
    import onnxruntime_genai as og

    key = str(Path(folder).resolve())
    if key not in _MODELS:
        _MODELS[key] = og.Model(key)
    return _MODELS[key]
