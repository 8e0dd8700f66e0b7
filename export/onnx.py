"""The student as ONNX through optimum's exporter, optionally with int8 weights (onnxruntime's MatMulNBits)."""
from __future__ import annotations

import json
from pathlib import Path

from distill.errors import require
from distill.progress import captured


def export_onnx(student: Path, out: Path, quant: str = "none", log_file: Path | None = None) -> dict:
    """optimum's exporter (and the int8 quantizer), their warnings and tracer output sent to `log_file`."""
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
    if quant == "int8":
        # Weight-only int8 (MatMulNBits, 8 bits, blocks of 32). onnxruntime's dynamic quantization also
        # quantizes activations per tensor, which LLM activation outliers ruin (SmolLM2: top-1 0.61);
        # weight-only keeps activations in fp32 (SmolLM2: top-1 0.975, KL 0.002).
        require("onnx_ir", "onnx-ir")
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        for f in sorted(out.glob("*.onnx")):
            data = f.with_suffix(".onnx_data")
            big = f.stat().st_size + (data.stat().st_size if data.exists() else 0) > 1_800_000_000
            q = MatMulNBitsQuantizer(onnx.load(str(f)), bits=8, block_size=32, is_symmetric=True,
                                     algo_config=DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=8))
            with captured(log_file):
                q.process()
            f.unlink()
            if data.exists():
                data.unlink()
            q.model.save_model_to_file(str(f), use_external_data_format=big)
    return {"task": task, "files": sorted(p.name for p in out.glob("*.onnx"))}
