"""The student as ONNX through optimum's exporter, optionally with int8 or int4 weights (onnxruntime's MatMulNBits)."""
from __future__ import annotations

import json
from pathlib import Path

from distill.errors import require
from distill.progress import captured


WEIGHT_BITS = {"int8": 8, "int4": 4}
"""ONNX weight-only quantizations: MatMulNBits with this many bits, blocks of 32, int8 compute."""
ACCURACY_LEVEL = 4
"""MatMulNBits' compute type. 0, onnxruntime's default and what int8 used before, computes in fp32 from
the unpacked weights, and measured slower than the fp32 model itself (the OBQA student's int8: 0.65 vs
0.17 s per question, benchmarks/results/obqa_student_forms.md; 4.8x slower in onnx_quant_speed.md); 4
quantizes each activation block to int8 and runs integer kernels: int8 1.35x faster than fp32 there."""


def quantize_weights(out: Path, bits: int, log_file: Path | None) -> None:
    """Weight-only quantization of every MatMul, in place. onnxruntime's dynamic quantization also quantizes
    activations per tensor, which LLM activation outliers ruin (SmolLM2: top-1 0.61); MatMulNBits quantizes
    weights per block of 32 and, at accuracy level 4, activations per block as well."""
    require("onnx_ir", "onnx-ir")
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    for f in sorted(out.glob("*.onnx")):
        data = f.with_suffix(".onnx_data")
        big = f.stat().st_size + (data.stat().st_size if data.exists() else 0) > 1_800_000_000
        algo = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=bits, accuracy_level=ACCURACY_LEVEL)
        q = MatMulNBitsQuantizer(onnx.load(str(f)), bits=bits, block_size=32, is_symmetric=True,
                                 accuracy_level=ACCURACY_LEVEL, algo_config=algo)
        with captured(log_file):
            q.process()
        f.unlink()
        if data.exists():
            data.unlink()
        q.model.save_model_to_file(str(f), use_external_data_format=big)


def export_onnx(student: Path, out: Path, quant: str = "none", log_file: Path | None = None) -> dict:
    """optimum's exporter (and the weight quantizer), their warnings and tracer output sent to `log_file`."""
    require("optimum.exporters.onnx", "optimum-onnx[onnxruntime]")
    from optimum.exporters.onnx import main_export

    hf_cfg = json.loads((student / "config.json").read_text())
    seq2seq = bool(hf_cfg.get("is_encoder_decoder"))
    task = "text2text-generation-with-past" if seq2seq else "text-generation-with-past"
    # optimum validates against torch itself and only warns; our parity check is the one that decides.
    with captured(log_file):
        main_export(str(student), output=str(out), task=task, do_validation=False, local_files_only=True)
    from distill.student import PromptFormat

    PromptFormat.load(student).save(out)  # how to ask the student travels with it
    if quant in WEIGHT_BITS:
        quantize_weights(out, WEIGHT_BITS[quant], log_file)
    return {"task": task, "files": sorted(p.name for p in out.glob("*.onnx"))}
