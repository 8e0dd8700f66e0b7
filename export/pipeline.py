"""`tinyllm-export`: resolve the student, convert it, check parity, write a self-contained folder."""
from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

from distill import layout
from distill.config import Config, write_resolved
from distill.errors import UserError
from distill.llama_runtime import LlamaCrash, cpu_model
from distill.progress import log
from export.source import for_student, resolve_source, student_data, task_prompts, training_pairs


def hardware() -> str:
    return f"{cpu_model()}, {platform.machine()} {platform.system()}"


class ParityFailure(Exception):
    """Exported files disagree with torch beyond the configured thresholds (files are kept)."""


def importance_matrix(student: Path, cfg: Config, model, tok, arch_name: str, out: Path) -> tuple[Path | None, dict]:
    """(imatrix file in `out`, or None; what it was made from) for export.imatrix = auto | none | FILE."""
    from export import imatrix

    choice = cfg.export.imatrix
    if choice == "none":
        return None, {"source": "none"}
    if choice != "auto":
        src = Path(choice)
        dst = out / (imatrix.FILE_NAME if src.suffix != ".gguf" else "imatrix.gguf")
        shutil.copyfile(src, dst)
        return dst, {"source": str(src), "tensors": len(imatrix.load(dst))}
    from distill.progress import Progress

    try:
        pairs, where = training_pairs(student, student_data(student, cfg), cfg.export.imatrix_questions)
    except UserError as exc:
        log(f"[export] no importance matrix: the student's training data was not found ({exc})")
        return None, {"source": "none (training data not found)"}
    texts = [prompt + target for prompt, target in pairs]
    means, tokens = imatrix.compute(model, tok, texts, arch_name, Progress("imatrix", len(texts), log))
    path = out / imatrix.FILE_NAME
    imatrix.save_dat(path, means, len(texts), f"tinyllm:{where}")
    log(f"[export] importance matrix from {len(texts)} training questions of {where} ({tokens} tokens, "
        f"{len(means)} matrices) -> {path.name}")
    return path, {"source": f"auto: {len(texts)} questions of {where}, answer prompt + gold answer", "tokens": tokens,
                  "tensors": len(means)}


def quantization_aware(student: Path, cfg: Config, model, tok, f16: Path, quant: str, n: int, arch_name: str,
                       out: Path, tool_log: Path | None) -> dict:
    """Tune the student under llama.cpp's rounding for `quant` (export/qat.py) and rewrite `f16` from the tuned
    weights; what the pass did, for the report. The types come from quantizing the untuned f16 once; the token
    embedding (and a tied LM head) is kept at q8_0, a type the pass mirrors, where llama.cpp may pick q6_k."""
    from export import gguf as gguf_mod
    from export import qat

    probe = out / f"probe-{quant}.gguf"
    gguf_mod.quantize(f16, probe, quant, log_file=tool_log, embeddings_q8=True, tensor_types=cfg.export.tensor_types)
    types = gguf_mod.held_types(probe)
    probe.unlink()
    odd = sorted({k for k in types.values() if k not in ("F32", "F16", *qat.MIRRORED)})
    if odd:
        raise UserError(f"llama.cpp quantizes some of this student's matrices to {', '.join(odd)} under --quant {quant}, "
                        "which the quantization-aware pass cannot mirror; export without --qat.")
    ptypes = qat.param_types(model, arch_name, types)
    try:
        pairs, where = training_pairs(student, cfg.data, n)
    except UserError as exc:
        raise UserError(f"the quantization-aware pass needs the student's training data, which was not found ({exc}); "
                        "set export.qat_questions=0 or point data.path at it.") from None
    log(f"[export] quantization-aware pass: {len(pairs)} training questions of {where}, {len(ptypes)} matrices "
        f"rounded as {quant} places them ({', '.join(sorted(set(ptypes.values())))}), lr {cfg.export.qat_lr:g}")
    tuned, facts = qat.tune(model, tok, pairs, ptypes, cfg.export.qat_lr)
    folder = qat.save(tuned, student, out / "qat-student")
    gguf_mod.write_f16(folder, f16)
    shutil.rmtree(folder)
    del tuned
    return {"questions": len(pairs), "source": where, "types": dict(sorted(types.items())), **facts}


def gptq_inputs(student: Path, cfg: Config, model, tok, n: int) -> dict:
    """Σ x xᵀ of every Linear's inputs on N of the student's training questions (export/gptq.py), once for all
    the grids an export rounds onto."""
    import torch

    from export import gptq

    try:
        pairs, where = training_pairs(student, cfg.data, n)
    except UserError as exc:
        raise UserError(f"GPTQ rounding needs the student's training data, which was not found ({exc}); "
                        "set export.gptq_questions=0 or point data.path at it.") from None
    names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    acc, tokens = gptq.hessians(model.eval(), tok, [p + a for p, a in pairs], names)
    return {"acc": acc, "tokens": tokens, "questions": len(pairs), "source": where}


def gptq_rounding(student: Path, cfg: Config, model, f16: Path, quant: str, arch_name: str, out: Path,
                  tool_log: Path | None, inputs: dict, dst: Path) -> dict:
    """A copy of the student with its q4_0/q5_0 matrices (under `quant` and export.tensor_types) rounded by GPTQ
    on `inputs`, written to `dst` as f16; what was done, for the report. The types come from quantizing `f16`
    once, as the real quantization will."""
    import copy

    from export import gguf as gguf_mod
    from export import gptq, qat

    probe = out / f"probe-{quant}.gguf"
    gguf_mod.quantize(f16, probe, quant, log_file=tool_log, tensor_types=cfg.export.tensor_types)
    types = gguf_mod.held_types(probe)
    probe.unlink()
    ptypes = qat.param_types(model, arch_name, types)
    if not any(k in gptq.GRIDS for k in ptypes.values()):
        raise UserError(f"--gptq rounds q4_0 and q5_0 matrices, and under --quant {quant}"
                        + (f" with {cfg.export.tensor_types}" if cfg.export.tensor_types else "")
                        + " this student has none; use --quant q4_0 or q5_0, or export without --gptq.")
    rounded = copy.deepcopy(model)
    facts = gptq.round_model(rounded, inputs["acc"], ptypes, inputs["questions"], inputs["tokens"],
                             cfg.export.gptq_damp)
    folder = qat.save(rounded, student, out / "gptq-student")
    gguf_mod.write_f16(folder, dst)
    shutil.rmtree(folder)
    del rounded
    return {"source": inputs["source"], "types": dict(sorted(types.items())), **facts}


def adapter_base(student: Path, cfg: Config) -> str:
    """export.adapter_rank: the model the student was trained from (export.adapter_base, else its run's
    student.model)."""
    if cfg.export.adapter_base:
        return cfg.export.adapter_base
    resolved = layout.run_of(student) / layout.RESOLVED_CONFIG
    if resolved.exists():
        import yaml

        base = (yaml.safe_load(resolved.read_text()) or {}).get("student", {}).get("model")
        if base and Path(base).resolve() != student.resolve():
            return base
    raise UserError(f"export.adapter_rank needs the model {student} was trained from, and no run config beside it "
                    "names one; pass export.adapter_base=<packaged name, GGUF or folder>.")


def adapter_export(student: Path, pretrained: str, out: Path, f16: Path, rank: int) -> dict:
    """The base (pretrained matrices, trained norms) as f16 GGUF at `f16`, and the delta as adapter-r<rank>.gguf."""
    from distill.models import load_causal_lm
    from export import gguf as gguf_mod
    from export.adapter import base_student, write_delta_adapter

    work = out / "adapter-work"
    log(f"[export] export.adapter_rank={rank}: base from the pretrained {pretrained}, the fine-tuning as a rank-{rank} adapter")
    model, tok, _ = load_causal_lm(pretrained)
    model.save_pretrained(work / "pretrained")
    tok.save_pretrained(work / "pretrained")
    base = base_student(student, work / "pretrained", work / "base")
    info = gguf_mod.write_f16(base, f16)
    adapter = out / f"adapter-r{rank}.gguf"
    info["adapter"] = {"file": adapter.name, "base": pretrained,
                       **write_delta_adapter(student, work / "pretrained", adapter, rank)}
    shutil.rmtree(work)
    return info


def check_student(student: Path) -> None:
    """Weights present and readable, before any work is done."""
    weights = sorted(student.glob("*.safetensors"))
    if not weights:
        raise UserError(f"{student} has no *.safetensors weights; give the 'student' folder a distill run saved.")
    from safetensors import safe_open

    for w in weights:
        try:
            with safe_open(str(w), "np") as fh:
                fh.keys()
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise UserError(f"{w} is not a readable safetensors file ({exc}); re-save the student or re-run "
                            "training.") from None


def check_quant(fmt: str, quant: str | None) -> str:
    """The quantization to use (the format's default when None); an unknown one is refused at once."""
    from export.gguf import QUANTS

    quant = quant or {"gguf": "q4_k_m", "genai": "int4"}.get(fmt, "none")
    if fmt == "gguf" and quant not in QUANTS and quant != "auto":
        raise UserError(f"--quant {quant} is not a GGUF option; use one of {', '.join(QUANTS)}, or auto.")
    if fmt == "onnx" and quant not in ("none", "int8", "int4"):
        raise UserError(f"--quant {quant} is not an ONNX option; use none, int8 or int4.")
    if fmt == "genai" and quant not in ("none", "int8", "int4"):
        raise UserError(f"--quant {quant} is not an onnxruntime-genai option; use int4 (the default), int8 or none "
                        "(fp32).")
    return quant


def export_student(source: str | None, fmt: str, quant: str | None, out: Path, cfg: Config,
                   run_id: str | None = None, track: bool = True, overwrite: bool = False, verbose: bool = False) -> dict:
    from distill.student import load_student
    from distill.config import StudentConfig
    from export import gguf as gguf_mod
    from export import parity
    from export.imatrix import BELOW_8_BITS

    quant = check_quant(fmt, quant)
    student, source_run = resolve_source(source, run_id, cfg)
    check_student(student)
    cfg = for_student(student, cfg)
    hf_cfg = json.loads((student / "config.json").read_text())
    if fmt == "genai":
        from export.genai import check_supported, quant_options

        check_supported(hf_cfg)
        quant_options(quant, cfg.export.genai_algo, cfg.export.genai_mixed_precision)  # refused before any work
    if fmt == "gguf":
        gguf_mod.check_supported(hf_cfg)
        if cfg.export.imatrix not in ("auto", "none"):  # a bad file is refused before any work
            from export.imatrix import load

            load(Path(cfg.export.imatrix))
    rank = cfg.export.adapter_rank if fmt == "gguf" else 0
    if rank and quant in ("auto", "f16"):
        raise UserError(f"export.adapter_rank={rank} ships a quantized pretrained base with the fine-tuning as a "
                        f"LoRA adapter; with --quant {quant} there is nothing to keep it from, so pick a quant "
                        "type (e.g. --quant q4_1) or set export.adapter_rank=0.")
    pretrained = adapter_base(student, cfg) if rank else None
    qat_n = cfg.export.qat_questions if fmt == "gguf" else 0
    if qat_n:
        from export import qat

        qat.check(quant, cfg.export.imatrix, rank)
    gptq_n = cfg.export.gptq_questions if fmt == "gguf" else 0
    if gptq_n:
        from export import gptq

        gptq.check(quant, cfg.export.imatrix, rank, qat_n, cfg.export.tensor_types)
    tt = cfg.export.tensor_types if fmt == "gguf" else ""
    tt_pairs = gguf_mod.tensor_type_pairs(tt)  # a malformed pair is refused before any work
    if tt:
        if quant in ("auto", "f16"):
            raise UserError(f"export.tensor_types sets types within a quantized file; --quant {quant} "
                            + ("chooses among whole-file types, " if quant == "auto" else "quantizes nothing, ")
                            + "so give a quant type (e.g. --quant q4_0) or drop the per-tensor types.")
    if quant == "auto":  # refused before any work when the student's data has no validation split
        from export.auto import validation_questions

        auto_questions = validation_questions(student, cfg, cfg.export.auto_questions)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it, or choose another --out.")
    if source_run is None:
        summary = layout.run_of(student) / layout.SUMMARY  # a local student made by tinyllm-distill knows its run
        if summary.exists():
            source_run = json.loads(summary.read_text()).get("run_id")
    final, out = out, out.with_name(out.name + ".partial")
    # Work in <out>.partial and rename at the end: a crash leaves nothing that looks complete.
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_resolved(cfg, out)
    # The converters' own output (tracer warnings, a line per tensor) goes to export.log, not the terminal.
    tool_log = None if verbose else out / "export.log"
    t0 = time.perf_counter()
    model, tok, _ = load_student(StudentConfig(model=str(student)))
    model.eval()
    auto = None
    if fmt == "gguf":
        f16 = out / "student-f16.gguf"
        if rank:
            info = adapter_export(student, pretrained, out, f16, rank)
        else:
            info = gguf_mod.write_f16(student, f16)
        if tt:
            try:
                gguf_mod.check_tensor_types(f16, tt_pairs)
            except UserError:
                shutil.rmtree(out)  # nothing computed yet but the f16 file: leave no half export behind
                raise
        arch_name = gguf_mod.SUPPORTED[gguf_mod.check_supported(hf_cfg)]
        if qat_n:
            info["qat"] = quantization_aware(student, cfg, model, tok, f16, quant, qat_n, arch_name, out, tool_log)
        gptq_f16s = []  # --quant auto --gptq: (candidate, grid, its f16 file, what was done)
        if gptq_n:
            from export import gptq

            try:
                inputs = gptq_inputs(student, cfg, model, tok, gptq_n)
                if quant == "auto":
                    for grid in gptq.QUANTS:
                        dst = out / f"student-f16-gptq-{grid}.gguf"
                        facts = gptq_rounding(student, cfg, model, f16, grid, arch_name, out, tool_log, inputs, dst)
                        gptq_f16s.append((f"{grid}-gptq{gptq_n}", grid, dst, facts))
                else:
                    info["gptq"] = gptq_rounding(student, cfg, model, f16, quant, arch_name, out, tool_log, inputs,
                                                 f16)
            except UserError:
                shutil.rmtree(out)  # no training data, or no q4_0/q5_0 matrix: leave no half export behind
                raise
            del inputs
        model_file = f16
        imatrix_file = None
        if quant == "auto" or quant in BELOW_8_BITS:
            imatrix_file, info["imatrix"] = importance_matrix(student, cfg, model, tok, arch_name, out)
        if quant == "auto":
            from export.auto import NoCandidateFits, choose

            try:
                auto = choose(f16, out, student, model, tok, cfg, auto_questions, imatrix=imatrix_file,
                              extra=gptq_f16s)
            except LlamaCrash as exc:
                raise ParityFailure(f"{str(exc).rstrip('.')}; the files are kept in {out}.") from None
            except NoCandidateFits as exc:
                for path in (f16, *(x[2] for x in gptq_f16s)):
                    path.unlink()
                if final.exists():
                    shutil.rmtree(final)
                out.rename(final)
                report = exc.args[0]
                raise ParityFailure(f"no GGUF candidate is certified within {report['max_accuracy_drop']:g} point(s) "
                                    f"of the torch student's exact match ({report['torch_em']:.1f}% on "
                                    f"{report['questions']} questions of {report['split']}; upper prediction bound of "
                                    f"the paired drop over all {report['distinct_candidates']} candidates, the tightest any "
                                    f"candidate reached: {report['smallest_certifiable_drop']:+.1f}); every candidate's "
                                    f"numbers are in {final / 'auto.json'}: raise --max-drop, use more validation "
                                    "questions, or keep f16.")
            quant = auto["chosen"]
            model_file = out / f"student-{quant}.gguf"
            for path in (f16, *(x[2] for x in gptq_f16s)):
                path.unlink()
        elif quant != "f16":
            model_file = out / f"student-{quant}.gguf"
            gguf_mod.quantize(f16, model_file, quant, log_file=tool_log, embeddings_q8=bool(qat_n),
                              imatrix=imatrix_file if quant in BELOW_8_BITS else None, tensor_types=tt)
            f16.unlink()
            if tt:  # what the file holds: llama.cpp falls back where a k-quant block does not fit a row
                from collections import Counter

                info["tensor_types"] = {"overrides": [list(pair) for pair in tt_pairs],
                                        "held": dict(sorted(Counter(gguf_mod.held_types(model_file).values()).items()))}
        info["file"] = model_file.name
    elif fmt == "genai":
        from export.genai import export_genai

        info = export_genai(student, out, quant, log_file=tool_log, algo=cfg.export.genai_algo,
                            mixed=cfg.export.genai_mixed_precision)
    else:
        from export.onnx import export_onnx

        info = export_onnx(student, out, quant, log_file=tool_log)
    seconds = time.perf_counter() - t0
    log(f"[export] wrote {fmt} ({quant}) to {final} in {seconds:.1f}s" + (f" (converter output: {final}/export.log)"
        if tool_log is not None and tool_log.exists() else "") + "; checking parity against torch")

    prompts, prompt_source = task_prompts(student, cfg, cfg.export.parity_prompts)
    if fmt == "gguf":
        try:
            report = parity.gguf_parity(model, tok, out / info["file"], prompts,
                                        lora=str(out / info["adapter"]["file"]) if rank else None)
        except LlamaCrash as exc:
            raise ParityFailure(f"{str(exc).rstrip('.')}; the files are kept in {out}.") from None
    elif fmt == "genai":
        report = parity.genai_parity(model, tok, out, prompts)
    elif hf_cfg.get("is_encoder_decoder"):
        report = parity.onnx_seq2seq_parity(model, tok, out, [p.rsplit("Answer:", 1)[0] + "Answer:" for p in prompts])
    else:
        report = parity.onnx_parity(model, tok, out, prompts)
    ec = cfg.export
    checks = {"tokenizer_round_trip": report["tokenizer_round_trip"]}
    if fmt in ("onnx", "genai") and quant == "none":
        checks[f"max_abs_logit_diff <= {ec.max_logit_diff}"] = report["max_abs_logit_diff"] <= ec.max_logit_diff
        if "generation_match" in report:
            checks["same generated text"] = report["generation_match"] == 1.0
    elif auto is not None:  # chosen by task accuracy within the budget; top-1 and KL are reported, not held
        checks[f"exact-match drop <= {auto['max_accuracy_drop']:g} points"] = True
    else:
        top1, kl = ec.min_top1_agreement.get(quant, 0.9), ec.max_mean_kl.get(quant, 0.1)
        checks[f"top1_agreement >= {top1}"] = report["top1_agreement"] >= top1
        checks[f"mean_kl <= {kl}"] = report["mean_kl"] <= kl
    report.update({"format": fmt, "quant": quant, "prompt_source": prompt_source, "checks": checks,
                   "passed": all(checks.values()), "export_seconds": round(seconds, 2), "student": str(student),
                   "size_bytes": sum(f.stat().st_size for f in out.glob("*.onnx*")) if fmt in ("onnx", "genai")
                   else sum((out / f).stat().st_size for f in (info["file"], *([info["adapter"]["file"]] if rank else []))),
                   "hardware": hardware(),
                   **info, **({"auto": auto} if auto else {})})
    (out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(device_readme(fmt, quant, out, info, report, student))
    if fmt == "gguf":
        (out / "Modelfile").write_text(gguf_mod.modelfile(student, info["file"],
                                                          adapter=info["adapter"]["file"] if rank else None))
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    out = final
    if track and source_run:
        log_to_source_run(cfg, source_run, out, fmt, quant, report)
    if not report["passed"]:
        failed = [k for k, ok in checks.items() if not ok]
        hint = f" ({info['warning']})" if info.get("warning") else ""
        raise ParityFailure(f"parity check failed ({', '.join(failed)}){hint}; the files are kept in {out} for "
                            f"inspection (parity.json has the numbers).")
    return report


def log_to_source_run(cfg: Config, run_id: str, out: Path, fmt: str, quant: str, report: dict) -> None:
    """Attach the export to the distill run it came from, so the UI shows a student with its exports."""
    import mlflow

    from distill.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(cfg))
    key = f"{fmt}-{quant}"
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params({f"export.{key}.parity_prompts": report["prompts"], f"export.{key}.size_bytes": report["size_bytes"]})
        for c in (report.get("auto") or {}).get("candidates", []):
            mlflow.log_metrics({f"export.auto.{c['name']}.{k}": float(c[k]) for k in ("size_bytes", "em", "drop_points",
                                                                                      "agreement")})
        mlflow.log_metrics({f"export.{key}.max_abs_logit_diff": report["max_abs_logit_diff"],
                            f"export.{key}.top1_agreement": report["top1_agreement"],
                            f"export.{key}.mean_kl": report["mean_kl"], f"export.{key}.passed": float(report["passed"])})
        mlflow.set_tag(f"tinyllm.export.{key}", str(out.resolve()))
        for f in out.iterdir():
            if f.is_file():
                mlflow.log_artifact(str(f), f"exports/{key}")
    log(f"[export] logged to MLflow run {run_id} under exports/{key}")


def device_readme(fmt: str, quant: str, out: Path, info: dict, report: dict, student: Path) -> str:
    from distill.student import PromptFormat

    pf = PromptFormat.load(student)
    head, tail = pf.wrap(pf.answer_prefix, "Answer:")
    question = "Q: Which gas do plants take in to make food?\nAnswer Choices:\n(a) oxygen\n(b) carbon dioxide\n(c) helium"
    prompt = head + question + tail
    lines = [f"# TinyLLM student — {fmt.upper()} ({quant})", "",
             "Exported by `tinyllm-export`; nothing from TinyLLM is needed to run it.", "",
             "## Prompt format", "", "The student answers multiple-choice questions asked like this, and replies with",
             "the text of the option it picks:", "", "```", prompt, "```", ""]
    if fmt == "gguf":
        from export.gguf import OLLAMA_NUM_CTX

        lora = f" --lora {info['adapter']['file']}" if "adapter" in info else ""
        lines += ["## Run with llama.cpp", "", "```bash",
                  f"llama-cli -m {info['file']}{lora} --temp 0 -n 32 -no-cnv -p \"$(printf "
                  f"'{prompt.replace(chr(10), chr(92) + 'n')}')\"",
                  f"llama-server -m {info['file']}{lora} --host 127.0.0.1 --port 8080 --jinja   # chat template = the "
                  "prompt format",
                  f"python -m llama_cpp.server --model {info['file']}"
                  + (f" --lora_path {info['adapter']['file']}" if lora else "")
                  + " --host 127.0.0.1 --port 8080   # the same server from llama-cpp-python",
                  "ollama create tinyllm-student -f Modelfile && ollama run tinyllm-student",
                  "```", "",
                  "`-no-cnv` keeps llama-cli to one completion (it starts a conversation when the file has a chat "
                  "template).",
                  *([f"`{info['file']}` holds the pretrained student's matrices ({info['adapter']['base']}) and "
                     f"`{info['adapter']['file']}` what training changed (rank {info['adapter']['rank']}): "
                     "always load both; the base alone is close to the untrained model."] if lora else []),
                  "With either server's chat API (`/v1/chat/completions`), send the question block (`Q: …\\nAnswer "
                  "Choices:\\n(a) …`)",
                  "as the user message, with `temperature: 0`, `repeat_penalty: 1` (llama_cpp.server's default is 1.1) "
                  "and `stop: [\"\\n\"]`;",
                  "the embedded chat template adds the task prefix and `Answer:`. The `Modelfile` does the same for "
                  f"Ollama (template, stop string, context {OLLAMA_NUM_CTX})."]
    elif fmt == "genai":
        lines += ["## Run with onnxruntime-genai", "", "`pip install onnxruntime-genai` (CPU; the same folder loads in its "
                  "C, C#, Java and Objective-C APIs on phones and in the browser):", "", "```python",
                  "import onnxruntime_genai as og", "model = og.Model('.')", "tok = og.Tokenizer(model)",
                  "tok.update_options(add_special_tokens='true')   # the BOS the student was trained with",
                  "params = og.GeneratorParams(model)",
                  "params.set_search_options(max_length=512, do_sample=False)",
                  "gen = og.Generator(model, params)", f"gen.append_tokens(tok.encode({prompt!r}))",
                  "stream, text = tok.create_stream(), ''",
                  "while not gen.is_done() and '\\n' not in text:",
                  "    gen.generate_next_token()",
                  "    text += stream.decode(gen.get_next_tokens()[0])",
                  "print(text.split('\\n')[0])", "```"]
    else:
        seq2seq = bool(json.loads((student / "config.json").read_text()).get("is_encoder_decoder"))
        ort_class = "ORTModelForSeq2SeqLM" if seq2seq else "ORTModelForCausalLM"
        # An encoder-decoder generates the answer alone; a decoder-only one continues the prompt.
        answer = "out[0]" if seq2seq else "out[0][ids['input_ids'].shape[1]:]"
        lines += ["## Run with onnxruntime", "", "```python", f"from optimum.onnxruntime import {ort_class}",
                  "from transformers import AutoTokenizer", "tok = AutoTokenizer.from_pretrained('.')",
                  f"model = {ort_class}.from_pretrained('.')",
                  f"ids = tok({prompt!r}, return_tensors='pt')",
                  "out = model.generate(**ids, max_new_tokens=32, do_sample=False)",
                  f"print(tok.decode({answer}, skip_special_tokens=True))",
                  "```"]
    if report.get("auto"):
        from export.auto import readme_lines

        lines += [""] + readme_lines(report["auto"])
    lines += ["", "## Parity against the torch student", "",
              f"On {report['prompts']} prompts from {report['prompt_source']} ({report['positions']} positions):", "",
              f"- max |logit difference|: {report['max_abs_logit_diff']:.4g}",
              f"- top-1 next-token agreement: {report['top1_agreement']:.4f}",
              f"- mean KL(torch || export): {report['mean_kl']:.4g}",
              f"- tokenizer round trip identical: {report['tokenizer_round_trip']}",
              *([f"- importance matrix: {info['imatrix']['source']}"
                 + (" (`imatrix.dat` here; `llama-quantize --imatrix imatrix.dat` reads it)"
                    if (out / "imatrix.dat").exists() else "")] if info.get("imatrix") else []),
              "- checks: " + ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in report["checks"].items()), ""]
    return "\n".join(lines)
