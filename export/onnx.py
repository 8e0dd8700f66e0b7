"""The student as ONNX through optimum's exporter, optionally int8 by onnxruntime dynamic quantization."""
from __future__ import annotations

import json
from pathlib import Path

from distill.errors import UserError, require


def export_onnx(student: Path, out: Path, quant: str = "none") -> dict:
    require("optimum.exporters.onnx", "optimum-onnx[onnxruntime]")
    from optimum.exporters.onnx import main_export

    hf_cfg = json.loads((student / "config.json").read_text())
    seq2seq = bool(hf_cfg.get("is_encoder_decoder"))
    task = "text2text-generation-with-past" if seq2seq else "text-generation-with-past"
    # optimum validates against torch itself and only warns; our parity check is the one that decides.
    main_export(str(student), output=str(out), task=task, do_validation=False, local_files_only=True)
    from distill.train import PromptFormat

    PromptFormat.load(student).save(out)  # how to ask the student travels with it
    if quant == "int8":
        require("onnxruntime.quantization", "onnxruntime")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for f in sorted(out.glob("*.onnx")):
            tmp = f.with_suffix(".int8.onnx")
            quantize_dynamic(str(f), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
            data = f.with_suffix(".onnx_data")
            f.unlink()
            if data.exists():
                data.unlink()
            tmp.rename(f)
    elif quant != "none":
        raise UserError(f"--quant {quant} is not an ONNX option; use none or int8.")
    return {"task": task, "files": sorted(p.name for p in out.glob("*.onnx"))}
