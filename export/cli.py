"""`tinyllm-export`: thin CLI over the export stage."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from distill import layout
from distill.errors import UserError, user_errors

EXAMPLES = """\b
examples:
  tinyllm-export runs/quickstart/student --format gguf --quant q4_k_m --out runs/quickstart/gguf
  tinyllm-export runs/quickstart/student --format onnx --quant int8 --out runs/quickstart/onnx
  tinyllm-export runs/quickstart/student --format genai --quant int4 --out runs/quickstart/genai
  tinyllm-export runs/paper-epochs/obqa/tinyllm/student --format gguf --quant auto --max-drop 1
  tinyllm-export --run <MLFLOW_RUN_ID> --format gguf --out student-gguf
"""


def split_source(source: str | None, overrides: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    """SOURCE and the key=value overrides, in whatever order they were given: a word with '=' that is not an
    existing path is an override (`tracking.uri=sqlite:////x/mlflow.db` before the folder, or with --run)."""
    words = [w for w in (source, *overrides) if w is not None]
    settings = tuple(w for w in words if "=" in w and not Path(w).exists())
    sources = [w for w in words if w not in settings]
    if len(sources) > 1:
        raise UserError(f"one SOURCE is exported at a time, and {len(sources)} were given ({', '.join(sources)}); "
                        "settings go as key=value, e.g. export.parity_prompts=20.")
    return (sources[0] if sources else None), settings


@click.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", required=False)
@click.argument("overrides", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["onnx", "gguf", "genai"]), required=True,
              help="Target runtime: onnx (optimum, onnxruntime), gguf (llama.cpp, Ollama), genai (onnxruntime-genai, "
              "ONNX Runtime's on-device generation runtime; its model builder's fused graph).")
@click.option("--quant", help="gguf: f16, q8_0, q6_k, q5_k_m, q5_0, q4_k_m, q4_1, q4_0, or auto (the smallest within --max-drop of "
              "torch's accuracy on the validation split); onnx: none, int8 or int4 (weight-only MatMulNBits, int8 compute); genai: int4 (default), int8 or none (fp32).")
@click.option("--imatrix", help="gguf below 8 bits: none (default), auto (an importance matrix from the student's "
              "own training questions, saved as imatrix.dat; measured worse on the OBQA student), or a llama-imatrix "
              "file (export.imatrix).")
@click.option("--adapter-rank", type=int, help="gguf below f16: quantize the pretrained student's matrices and ship the "
              "fine-tuning as a rank-N f16 LoRA adapter beside them (export.adapter_rank; base from export.adapter_base or "
              "the student's run; not yet better than q4_k_m in exact match on the OBQA student).")
@click.option("--qat", "qat_questions", type=int, help="gguf q4_0, q5_0, q8_0: first a quantization-aware pass over "
              "this many of the student's training questions, tuning it under llama.cpp's exact rounding to match "
              "the fp32 student (export.qat_questions; 0 = off).")
@click.option("--gptq", "gptq_questions", type=int, help="gguf q4_0, q5_0 (or --tensor-type mixes with them): round "
              "their matrices onto llama.cpp's grid with GPTQ's error feedback, on the inputs of this many of the "
              "student's training questions, instead of nearest rounding (export.gptq_questions; 0 = off); with --quant "
              "auto, q4_0 and q5_0 so rounded are two more candidates.")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="PATTERN=TYPE", help="gguf: quantize the "
              "tensors whose GGUF name matches the regular expression PATTERN to TYPE (f16, q8_0, q6_k, q5_k, q5_1, "
              "q5_0, q4_k, q4_1, q4_0, q3_k, q2_k) instead of --quant's type, as llama-quantize's --tensor-type; "
              "repeatable, the first match wins (export.tensor_types), e.g. --tensor-type ffn_down=q8_0.")
@click.option("--max-drop", type=float, help="--quant auto: exact-match points a GGUF may lose against torch "
              "(export.max_accuracy_drop, default 1).")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (self-contained: model, tokenizer, "
                                                              "parity report, README); default: exports/<format>-<quant> beside the student.")
@click.option("--run", "run_id", help="Export the student of this distill run (MLflow run id) instead of SOURCE.")
@click.option("-c", "--config", type=click.Path(dir_okay=False), help="YAML config whose export: section sets "
                                                                      "thresholds.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the plan, then exit.")
@click.option("--no-mlflow", is_flag=True, help="Do not log the export back to the source run.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (refused otherwise).")
@click.option("--verbose", is_flag=True, help="Show the converters' own output (optimum's tracer warnings, llama.cpp's "
              "per-tensor lines) instead of writing it to <out>/export.log.")
@user_errors
def main(source, overrides, fmt, quant, imatrix, adapter_rank, qat_questions, gptq_questions, tensor_types, max_drop, out, run_id, config, dry_run, no_mlflow, overwrite, verbose):
    """Turn a trained student (SOURCE: a local folder, runs:/… or models:/name/version) into ONNX, GGUF or an onnxruntime-genai model.

    Every export is checked against the torch model on real prompts; a parity failure exits
    non-zero and keeps the files for inspection.
    """
    from distill.config import dump_yaml, load_config

    source, overrides = split_source(source, overrides)
    if not source and not run_id:
        raise UserError("give a SOURCE (model folder, runs:/… or models:/…) or --run RUN_ID.")
    if source and run_id:
        raise UserError(f"give either SOURCE ({source}) or --run {run_id}, not both.")
    from export.gguf import variant as gguf_variant
    from export.pipeline import check_quant

    quant = check_quant(fmt, quant)  # before anything is read or downloaded
    if max_drop is not None:
        overrides = (*overrides, f"export.max_accuracy_drop={max_drop}")
    if imatrix is not None:
        overrides = (*overrides, f"export.imatrix={imatrix}")
    if adapter_rank is not None:
        overrides = (*overrides, f"export.adapter_rank={adapter_rank}")
    if qat_questions is not None:
        overrides = (*overrides, f"export.qat_questions={qat_questions}")
    if gptq_questions is not None:
        overrides = (*overrides, f"export.gptq_questions={gptq_questions}")
    if tensor_types:
        quoted = ",".join(tensor_types).replace("'", "''")  # single-quoted YAML: a pattern's [ ] { } stay text
        overrides = (*overrides, f"export.tensor_types='{quoted}'")
    cfg = load_config(config, overrides)
    # Default: beside the student, where tinyllm-bench looks for its exported forms.
    student = Path(source) if source and Path(source).is_dir() else layout.student_dir(cfg.output_dir)
    rank = cfg.export.adapter_rank if fmt == "gguf" else 0
    qat_n = cfg.export.qat_questions if fmt == "gguf" else 0
    gptq_n = cfg.export.gptq_questions if fmt == "gguf" else 0
    variant = gguf_variant(quant, rank, qat_n, cfg.export.tensor_types, gptq_n) if fmt == "gguf" else quant
    out_dir = Path(out) if out else layout.export_dir(student, fmt, variant)
    if dry_run:
        from export.source import for_student

        local = source and (Path(source) / "config.json").exists()
        shown = for_student(Path(source), cfg) if local else cfg  # the data the real export reads
        click.echo(dump_yaml(shown))
        click.echo(json.dumps({"source": source or f"runs:/{run_id}/student", "format": fmt, "quant": quant,
                               "data": f"{shown.data.name}" + ("" if local else " (a runs:/ or models:/ source uses "
                                                               "its run's own data section, read at export)"),
                               "out": str(out_dir), "out_exists": out_dir.exists()
                               and ("refused without --overwrite" if not overwrite else "replaced (--overwrite)")},
                              indent=2))
        return
    from export.pipeline import ParityFailure, export_student

    try:
        report = export_student(source, fmt, quant, out_dir, cfg, run_id=run_id, track=not no_mlflow,
                                overwrite=overwrite, verbose=verbose)
    except ParityFailure as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    click.echo(json.dumps({k: v for k, v in report.items() if k not in ("student",)}, indent=2))


if __name__ == "__main__":
    main()
