"""One typed config for all three stages.

Loaded from YAML, then `key=value` overrides from the command line (dotted keys, list items by
index: `train.lr=1e-4`, `teachers.0.alpha=0.5`, `teachers=[]`). Precedence: CLI > file > defaults.
Unknown keys and wrong types raise UserError naming the key and where it came from.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distill import layout
from distill.errors import UserError, read_utf8

# ---------------------------------------------------------------------------------------------
# The schema. Every field has a default except where a value only the user can know is needed.


@dataclass
class DataConfig:
    name: str = "tinyllm-obqa"
    """Dataset name (see `tinyllm-distill data --list`), `hf:<hub id>[:<config>]`, or `jsonl`."""
    path: str | None = None
    """Dataset folder; default $TINYLLM_DATA_DIR/<folder>, else ../shared/data/<folder>."""
    train_split: str = "train"
    """Split the student trains on (and teachers explain)."""
    eval_split: str = "valid"
    """Split scored during and after training; with train.epoch_eval it picks the epoch, so keep it off the test split."""
    test_split: str = "test"
    """Split that export parity prompts, `tinyllm-distill eval` and `tinyllm-bench` use."""
    max_train: int | None = None
    """Use only the first N training questions (None = all). Lower it for a quick pilot."""
    max_eval: int | None = None
    """Use only the first N questions of the eval split (None = all)."""
    max_test: int | None = None
    """Use only the first N questions of the test split (None = all)."""


@dataclass
class TeacherConfig:
    name: str
    """Short name; also the rationale task prefix the student learns (`explain_<name>:`)."""
    backend: Literal["llama.cpp", "transformers", "openai", "files"]
    """llama.cpp (GGUF), transformers (folder or hub id), openai (any OpenAI-compatible server) or files (precomputed rationales)."""
    model: str | None = None
    """GGUF path or packaged name (llama.cpp), directory or hub id (transformers),
    served model name (openai), rationale source (files: flan-t5-xl | llama-2-7b | a JSONL path)."""
    alpha: float = 1.0
    """Weight of this teacher's rationale loss; the paper searches {0.01, 0.1, 0.5, 1, 2, 3}."""
    base_url: str | None = None
    """openai backend: e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str | None = None
    """openai backend: name of the environment variable holding the API key (never the key)."""
    chat: bool | None = None
    """Use the model's chat template (None = when it has one)."""
    max_new_tokens: int = 128
    """Longest rationale generated; a rationale cut here is rejected as truncated."""
    temperature: float = 0.0
    """0 = greedy (reproducible); the paper's teachers decode greedily."""
    concurrency: int = 4
    """openai backend: requests in flight at once."""
    timeout_s: float = 120.0
    """openai backend: seconds before a request is retried."""
    n_ctx: int = 2048
    """llama.cpp backend: context window; k in-context examples must fit in it."""
    trust_remote_code: bool = False
    """Run code shipped with a transformers model; off unless you trust its source."""


@dataclass
class RationaleConfig:
    template: str = "tf-cot-v1"
    """Teacher-forcing CoT prompt template (versioned; part of the cache key)."""
    k_shot: int = 2
    """In-context examples per prompt (the paper uses a few; more costs context and time)."""
    selection: Literal["random", "similar"] = "random"
    """How in-context examples are picked: random (the paper) or by lexical overlap."""
    seed: int = 0
    """Seed for picking in-context examples."""
    cache_dir: str = "runs/cache"
    """Append-only rationale store shared by runs; a re-run generates nothing already stored."""
    threads: int | None = None
    """CPU threads for in-process teachers (llama.cpp, transformers); None = all cores."""
    keep_rejected: bool = False
    """Train on rationales the quality filter rejected (off: they are kept, counted, not used)."""


@dataclass
class StudentConfig:
    model: str = "smollm2-135m-instruct"
    """Packaged name, local directory, GGUF file, or hub id."""
    architecture: Literal["auto", "decoder", "seq2seq"] = "auto"
    """decoder (Llama/SmolLM2, Qwen2, Gemma 3) or seq2seq (T5); auto reads the model's config."""
    lora: bool = False
    """Train LoRA adapters instead of every weight (merged into the saved student)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = lora_alpha / lora_r)."""
    answer_prefix: str = "predict:"
    """Task prefix of the answer task, the only one used at inference."""
    rationale_prefix: str = "explain_{teacher}:"
    """Task prefix of each teacher's rationale task; {teacher} is the teacher's name."""
    task_position: Literal["auto", "before", "after"] = "auto"
    """Where the task prefix goes: 'before' the question (the paper's T5 layout) or 'after' it, so a
    decoder-only student computes a question's shared tokens once for all its tasks. auto = after
    for decoder-only students, before for encoder-decoder ones."""
    trust_remote_code: bool = False
    """Run code shipped with the student model; off unless you trust its source."""


@dataclass
class TrainConfig:
    lr: float = 5e-5
    """Peak learning rate of AdamW (linear decay to 0); the paper uses 5e-5."""
    epochs: float = 1.0
    """Passes over the training questions (fractions allowed)."""
    max_steps: int | None = None
    """Stop after N optimizer steps (None = run all epochs)."""
    batch_size: int = 8
    """Questions per step; lower it if you run out of memory (raise grad_accum to compensate)."""
    grad_accum: int = 1
    """Optimizer steps take batch_size x grad_accum questions."""
    micro_batch_tokens: int = 1024
    """Padded tokens per forward pass (all tasks of a step share them, length-sorted). Bigger passes
    keep a GPU busy (fewer, larger kernels) at activation memory roughly in proportion; on a CPU they buy
    nothing. Recipes: 1024 on a CPU; 16384 for a 135M student on one big GPU (a 64-question step at 21 GiB
    in bf16 on an H200, configs/scale/one-gpu.yaml); 8192 with gradient checkpointing for 1.7B
    (configs/scale/fsdp-decoder.yaml). Lower it if you run out of memory: the loss is the same, only the
    number of passes grows."""
    share_prompt: bool = True
    """Decoder-only students: pack each question's tasks into one row so the prompt tokens they
    share are computed once (same loss and gradients as separate rows, fewer tokens)."""
    attention: Literal["sdpa", "flex"] = "sdpa"
    """How packed rows (share_prompt) attend. sdpa: the student's own attention with a dense 4D mask
    (runs everywhere; the mask keeps GPUs off their fused kernels). flex: torch's FlexAttention with a block
    mask built from the packing layout, fused kernels compiled on first use (tens of seconds, again per new
    shape bucket); the same computation. CUDA only: torch has no FlexAttention backward on CPU."""
    ce_chunk_tokens: int = 0
    """0: the vocabulary projection and cross-entropy run over all of a pass's target tokens at once.
    N: N target tokens at a time, each chunk's gradients computed in the same pass, so memory holds
    N x vocabulary logits instead of all of them (the same loss and gradients, no extra arithmetic; meant
    for big GPU passes and large vocabularies such as Gemma's 262k). Decoder-only students. On 2 CPU cores
    it did not pay: SmolLM2 (N=1024) 9% faster in fp32 but 23% slower in bf16, Gemma 3 270M (N=256, bf16)
    20% slower at a higher peak RSS (benchmarks/results/train_kernels_cpu.json)."""
    max_length: int = 512
    """Tokens per sequence; longer inputs are cut from the left of the question."""
    warmup_ratio: float = 0.0
    """Share of the steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    compile: bool = False
    """torch.compile the student's forward and target-position projection (dynamic shapes, one graph for
    every row length). The first steps pay for compiling (a minute or more, again after a restart). On a
    2-core CPU it made training 6.8x slower (benchmarks/results/README.md), so it is off; try it on a GPU."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision of the forward/backward (weights and optimizer stay fp32); fp16 adds a
    gradient scaler. bf16 is the choice on recent GPUs and also runs on CPUs."""
    sharding: Literal["none", "fsdp"] = "none"
    """none: every process holds the whole student (data parallel). fsdp: parameters, gradients and
    optimizer state are sharded across processes (torch FSDP2) for students too big for one device;
    launch with torchrun/accelerate, full fine-tuning only."""
    max_grad_norm: float = 1.0
    """Clip the gradient's global norm to this (0 = no clipping)."""
    log_every: int = 10
    """Print and log a step line every N steps."""
    eval_every: int = 0
    """Evaluate on the eval split every N steps (0 = only at the end)."""
    save_every: int = 0
    """Checkpoint every N steps for --resume (0 = never)."""
    seed: int = 0
    """Seed for initialisation of new weights, data order and dropout."""
    eval_method: Literal["loglik", "generate", "both"] = "both"
    """loglik: option log-likelihood (fast, one forward per question); generate: greedy answer, scored
    by `em`, exact match to the gold option's text (the paper's metric), and by `option_match`, the
    option it names; both (the log-likelihood pass then also settles most greedy answers)."""
    epoch_eval: bool = False
    """At the end of every epoch, save the student and evaluate it on data.eval_split and
    data.test_split; the saved student is then the epoch best on data.eval_split (`select_by`).
    The test split is only reported, never used to choose. Curves go to epochs.json and MLflow."""
    select_by: Literal["loglik", "loglik_sum", "em", "option_match"] = "em"
    """With epoch_eval: the eval-split accuracy that picks the epoch (em = the paper's exact match,
    option_match = the answer names the gold option; both need eval_method generate or both; loglik
    needs loglik or both)."""


@dataclass
class TrackingConfig:
    uri: str | None = None
    """MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db."""
    artifact_location: str | None = None
    """Where a new experiment keeps its artifacts (student, exports). Default: beside the store, i.e.
    runs/mlartifacts for the default store, <dir>/mlartifacts for sqlite:///<dir>/x.db, the server's own
    artifact root for http(s)://; a database URI without a server needs it (it is refused otherwise).
    Fixed when the experiment is created."""
    experiment: str = "tinyllm"
    """MLflow experiment the runs go to."""
    register_as: str | None = None
    """Register the student under this model name."""
    system_metrics: bool = True
    """Log CPU, memory (and GPU) use while the run lasts."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra tags on every run (e.g. tracking.tags.cell=lora-answer), to group runs in the UI."""


QUANT_KEYS = ("f16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_1", "q4_0", "int8", "int4")
"""The quantizations export knows (GGUF's, then ONNX's): the keys of the per-quant thresholds below."""


@dataclass
class ExportConfig:
    max_logit_diff: float = 1e-3
    """ONNX fp32: largest allowed |logit difference| against torch (SmolLM2-135M measured 1e-4)."""
    min_top1_agreement: dict[str, float] = field(
        metadata={"keys": QUANT_KEYS},
        default_factory=lambda: {"f16": 0.99, "q8_0": 0.94, "q6_k": 0.9, "q5_k_m": 0.8, "q5_0": 0.8, "q4_k_m": 0.8, "q4_1": 0.7,
                                 "q4_0": 0.7, "int8": 0.8, "int4": 0.6})
    """GGUF and ONNX int8/int4, per quant: share of positions whose top-1 token matches torch. 4-bit costs
    small models more (SmolLM2-135M, 50 OBQA prompts: f16 0.997, q8_0 0.946, q4_k_m 0.865, int8 0.980);
    override per quant, e.g. export.min_top1_agreement.q4_k_m=0.85. q5_k_m is not between q6_k and q4_k_m
    for SmolLM2 (its 576-wide rows are not a multiple of k-quants' 256, so llama.cpp falls back to other
    types): the OBQA TinyLLM student gave q6_k 0.955 / KL 0.013 but q5_k_m 0.849 / KL 0.112, so q5_k_m
    shares q4_k_m's bounds (q4_k_m itself: 0.885 / 0.055, its rows falling back to q5_0); q4_0 (every
    matrix 4-bit) gave 0.779 / 0.253 and is bounded at 0.7 / 0.3; ONNX int4 (MatMulNBits, round-to-nearest)
    gave 0.716 / 0.439 on the quick start's student (symmetric or not, level 0 or 4) and is bounded at
    0.6 / 0.6; q6_k is set by bits per weight. These
    bounds catch a broken conversion (agreement near zero, KL of several nats); what a quant costs in
    accuracy is `--quant auto`'s and tinyllm-bench's to measure."""
    max_mean_kl: dict[str, float] = field(
        metadata={"keys": QUANT_KEYS},
        default_factory=lambda: {"f16": 0.01, "q8_0": 0.05, "q6_k": 0.08, "q5_k_m": 0.15, "q5_0": 0.15, "q4_k_m": 0.15, "q4_1": 0.3,
                                 "q4_0": 0.3, "int8": 0.15, "int4": 0.6})
    """Per quant: mean KL(torch || export) over all positions."""
    parity_prompts: int = 50
    """Real prompts from the student's test set used for every parity check."""
    max_accuracy_drop: float = 1.0
    """--quant auto: the most exact-match accuracy (points, on the validation split) a GGUF may lose against
    the torch student, held to the one-sided 95% upper bound of the paired drop; the smallest candidate
    certified within it is kept (`tinyllm-export --max-drop`)."""
    auto_questions: int | None = None
    """--quant auto: validation questions every candidate answers (None = all). Fewer is faster but widens
    the bound the choice is held to: on 500 questions a candidate whose correctness differs from torch's on
    1 in 10 is bounded no tighter than +2.3 points, even when it loses nothing on average."""
    genai_algo: str = "default"
    """--format genai int4/int8: the model builder's weight-quantization method: default (round-to-nearest, the
    builder's own default), rtn, or k_quant (scales searched per block, as llama.cpp's k-quants do)."""
    genai_mixed_precision: str = ""
    """--format genai int4: MatMul groups quantized to another type than the int4 body, comma-separated
    selector:type pairs, e.g. last_matmul:int8 (the LM head) or last_matmul:int8,mixed_layers:int8 (also the
    first and last eighth of the layers and every third layer's qkv/v/down projections). Empty: all int4."""
    imatrix: str = "none"
    """GGUF below 8 bits (q6_k … q4_0, and --quant auto's candidates): the importance matrix llama.cpp's
    quantizer weighs rounding errors by. none (default): plain quantization. auto: computed from the torch
    student on its own training questions (answer prompt + gold answer), saved as <out>/imatrix.dat; measured
    to make the OBQA student worse at every 4-5 bit form (benchmarks/results/obqa_imatrix.md), so not the
    default until that is understood. Or a file from llama-imatrix (.dat or .gguf)."""
    imatrix_questions: int = 512
    """Training questions the auto importance matrix is computed on (one forward pass each)."""
    adapter_rank: int = 0
    """GGUF below f16: 0 = quantize the trained student. R: quantize the *pretrained* matrices (with the
    trained norms) and ship the fine-tuning delta beside them as a rank-R f16 LoRA adapter
    (adapter-r<R>.gguf, which llama.cpp, llama-server and Ollama add at load). Fine-tuning moves a student
    that came from a 4-bit file by less than one 4-bit step, so plain re-quantization rounds most of it
    away; the adapter brings it back, though on the OBQA TinyLLM student rank 16 matched torch's answers
    only slightly more often than q4_k_m and lost more exact match (benchmarks/results/obqa_delta_adapter.md).
    Not with --quant auto."""
    adapter_base: str | None = None
    """The model the student was trained from (a packaged name, GGUF or model folder); default: the
    student.model of the run the student came from (its resolved_config.yaml)."""
    qat_questions: int = 0
    """GGUF q4_0, q5_0 or q8_0: 0 = quantize the trained student as it is. N: first tune it for one pass over N of
    its own training questions (all when N exceeds them) with every weight rounded as llama.cpp will round it and
    every matmul input at q8_0, to match the fp32 student's next-token distributions (KL), then quantize; the
    rounding is mirrored exactly, so the file holds the blocks the pass trained with (export/qat.py).
    `tinyllm-export --qat N`. Not with --quant auto, an importance matrix or an adapter."""
    qat_lr: float = 1e-5
    """The quantization-aware pass's AdamW learning rate."""
    gptq_questions: int = 0
    """GGUF q4_0 or q5_0 (and --tensor-type mixes with them): 0 = llama.cpp rounds every weight to its nearest
    grid point. N: the q4_0/q5_0 matrices are rounded onto llama.cpp's own grid by GPTQ instead (one input
    column at a time, each column's error spread over the columns not yet rounded, weighted by the inverse
    Hessian of that matrix's inputs on N of the student's training questions: answer prompt + gold answer);
    llama.cpp then re-quantizes them to exactly those blocks (export/gptq.py). `tinyllm-export --gptq N`.
    With --quant auto, q4_0 and q5_0 so rounded are two more candidates (`q4_0-gptq<N>`, `q5_0-gptq<N>`). Not with
    an importance matrix, an adapter or the quantization-aware pass."""
    gptq_damp: float = 0.01
    """GPTQ's damping: this fraction of the Hessian's mean diagonal is added to its diagonal before inverting."""
    tensor_types: str = ""
    """GGUF: per-tensor quantization types over --quant's, comma-separated PATTERN=TYPE pairs as llama-quantize's
    --tensor-type takes them (`tinyllm-export --tensor-type`): PATTERN a regular expression searched in the GGUF
    tensor name (blk.<i>.attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down.weight, token_embd.weight),
    the first pair that matches wins; TYPE one of f16, q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k,
    q2_k. E.g. ffn_down=q8_0,attn_v=q8_0. llama.cpp falls back to a block type where a k-quant's
    256-wide blocks do not fit a row; the types the file really holds are in parity.json. Not with --quant auto."""


@dataclass
class BenchConfig:
    limit: int | None = None
    """Questions from the test split (None = all)."""
    threads: int = 2
    """CPU threads every runtime gets (fixed, so contestants are comparable)."""
    warmup: int = 1
    """Questions answered first and not timed."""
    contestants: list[str] = field(default_factory=list)
    """Empty = every form of the student plus every teacher."""
    timeout_s: float = 600.0
    """A contestant still answering this many seconds after it has loaded is stopped and reported as timed
    out (loading, which a loaded machine or a large teacher stretches, counts against load_timeout_s)."""
    load_timeout_s: float = 1800.0
    """A contestant that has not loaded its model after this many seconds is stopped (timed out loading)."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """Where the torch and ONNX students run: cpu (the edge target), cuda (torch on the GPU, onnxruntime's
    CUDA provider from onnxruntime-gpu), auto = cuda when present. GGUF runs wherever llama.cpp was built for."""


@dataclass
class Config:
    output_dir: str = "runs/default"
    """Where the run writes: resolved config, student, checkpoints, exports, bench (see distill/layout.py)."""
    data: DataConfig = field(default_factory=DataConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    rationales: RationaleConfig = field(default_factory=RationaleConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


# ---------------------------------------------------------------------------------------------
# Building typed objects from plain YAML values.

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp in _TYPE_WORDS:
        return _TYPE_WORDS[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)

    def wrong() -> UserError:
        return UserError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}.")

    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, source)
            except UserError:
                pass
        raise wrong()
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise wrong()
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong()
        _, item_tp = typing.get_args(tp)
        return {str(k): _convert(item_tp, v, f"{key}.{k}", source) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise wrong()
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f"{key}.{i}", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong()
        return _build(tp, value, key, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 2e-5 (no dot) as a string; people write it that way.
            try:
                return float(value)
            except ValueError:
                raise wrong() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong()
        return float(value)
    if tp is str:
        # YAML turns bare 1e-4 or 3 into numbers; a string field never wants a mapping or list.
        if isinstance(value, (dict, list)) or value is None:
            raise wrong()
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(cls: type, name: str, prefix: str, source: str) -> UserError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Known keys: {', '.join(names)}."
    return UserError(f"{source}: unknown key '{prefix}{name}'.{hint}")


def _check_known(f: dataclasses.Field, key: str, prefix: str, source: str) -> None:
    """A mapping field with a closed set of keys (per-quant thresholds) refuses any other, as a dataclass does."""
    known = f.metadata["keys"]
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean '{prefix}.{close[0]}'?" if close else f" Known keys: {', '.join(known)}."
        raise UserError(f"{source}: unknown key '{prefix}.{key}'.{hint}")


def _build(cls: type, raw: dict, key: str, source: str) -> Any:
    prefix = f"{key}." if key else ""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            raise _unknown_key(cls, str(name), prefix, source)
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _convert(hints[name], raw[name], prefix + name, source)
            for k in kwargs[name] if "keys" in f.metadata else ():
                _check_known(f, k, prefix + name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{source}: '{prefix.rstrip('.') or 'config'}' is missing the required key "
                            f"'{prefix}{name}'.")
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Loading, overriding, validating, writing.


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at `path`, then each `key=value` override in order."""
    cfg = Config()
    if path is not None:
        source = str(path)
        try:
            text = read_utf8(path)
        except FileNotFoundError:
            raise UserError(f"config file {source} does not exist; pass the path to a YAML file such as "
                            "configs/quickstart.yaml.")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{source}{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax there.")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UserError(f"{source}: the top level must be a mapping of keys such as 'data:' and 'train:'.")
        cfg = _build(Config, raw, "", source)
    for item in overrides:
        apply_override(cfg, item)
    validate(cfg)
    return cfg


def apply_override(cfg: Config, item: str) -> None:
    source = f"command-line override '{item}'"
    if "=" not in item:
        raise UserError(f"{source}: write overrides as key=value, e.g. train.lr=1e-4.")
    dotted, _, text = item.partition("=")
    parts = dotted.strip().split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    target: Any = cfg
    target_tp: Any = Config
    target_field: dataclasses.Field | None = None
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        last = depth == len(parts) - 1
        if isinstance(target, list):
            if not part.isdigit() or int(part) >= len(target):
                raise UserError(f"{source}: '{prefix}' has {len(target)} item(s); '{part}' is not a valid index.")
            if last:
                item_tp = type(target[int(part)])
                target[int(part)] = _convert(item_tp, value, dotted, source)
                return
            target = target[int(part)]
            continue
        if isinstance(target, dict) and last:
            if target_field is not None and "keys" in target_field.metadata:
                _check_known(target_field, part, prefix, source)
            target[part] = _convert(typing.get_args(target_tp)[1], value, dotted, source)
            return
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            raise _unknown_key(type(target), part, prefix + "." if prefix else "", source)
        target_field = next(f for f in dataclasses.fields(target) if f.name == part)
        target_tp = _hints(type(target))[part]
        if last:
            setattr(target, part, _convert(target_tp, value, dotted, source))
            return
        target = getattr(target, part)


def field_help() -> dict[str, str]:
    """Each config key (dotted, `teachers.N.` for teacher fields) -> the first line of the docstring under
    its field in this file, as TRL's dataclass fields carry their help."""
    import ast
    import inspect
    import sys

    tree = ast.parse(inspect.getsource(sys.modules[__name__]))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    docs: dict[str, dict[str, str]] = {}
    for name, node in classes.items():
        docs[name] = {}
        for stmt, nxt in zip(node.body, node.body[1:] + [None]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                    and isinstance(nxt.value.value, str) else ""
                docs[name][stmt.target.id] = re.split(r"(?<=[a-z0-9)])\. (?=[A-Z])", " ".join(doc.split()))[0].rstrip(".")
    out: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            tp = _hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                walk(typing.get_args(tp)[0], f"{prefix}{f.name}.N.")
            else:
                out[prefix + f.name] = docs.get(cls.__name__, {}).get(f.name, "")

    walk(Config, "")
    return out


def describe_keys(cfg: Config) -> str:
    """Every key with its resolved value and one-line help, for `tinyllm-distill config`."""
    flat: dict[str, Any] = {}

    def flatten(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                flatten(v, f"{prefix}{f.name}.")
            elif isinstance(v, list) and v and dataclasses.is_dataclass(v[0]):
                for i, item in enumerate(v):
                    flatten(item, f"{prefix}{f.name}.{i}.")
            else:
                flat[prefix + f.name] = v

    flatten(cfg, "")
    helps = field_help()
    lines = []
    for key, value in flat.items():
        generic = ".".join("N" if part.isdigit() else part for part in key.split("."))
        shown = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        lines.append(f"{key} = {shown}" + (f"    # {helps[generic]}" if helps.get(generic) else ""))
    if not cfg.teachers:
        lines += [f"{k} (per teacher)" + (f"    # {h}" if h else "") for k, h in helps.items() if k.startswith("teachers.N.")]
    return "\n".join(lines)


def load_section(path: str | os.PathLike, key: str, cls):
    """One section of a YAML config (e.g. the `data:` of a run's resolved_config.yaml) as `cls`, on its
    own: an older run's other sections need not match today's schema."""
    raw = yaml.safe_load(read_utf8(path)) or {}
    return _build(cls, raw.get(key) or {}, key, str(path))


def validate(cfg: Config) -> None:
    """Checks that cross fields; type checks already happened while building."""
    seen = set()
    for i, t in enumerate(cfg.teachers):
        where = f"teachers.{i} ({t.name})"
        if t.name in seen:
            raise UserError(f"{where}: two teachers are named '{t.name}'; give each a unique name.")
        seen.add(t.name)
        if not t.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise UserError(f"{where}: use letters, digits, '-', '_' or '.' in a teacher name.")
        if t.alpha < 0:
            raise UserError(f"{where}: alpha must be >= 0, got {t.alpha}.")
        if t.backend != "files" and not t.model:
            raise UserError(f"{where}: the {t.backend} backend needs 'model'.")
        if t.backend == "openai" and not t.base_url:
            raise UserError(f"{where}: the openai backend needs 'base_url', e.g. http://127.0.0.1:8000/v1.")
    for key, value in (("bench.limit", cfg.bench.limit), ("export.auto_questions", cfg.export.auto_questions),
                       ("data.max_train", cfg.data.max_train), ("data.max_eval", cfg.data.max_eval),
                       ("data.max_test", cfg.data.max_test)):
        if value is not None and value < 1:  # a negative count would slice from the end: [:-3] drops 3
            flag = " (--limit)" if key == "bench.limit" else ""
            raise UserError(f"{key}{flag} must be at least 1 (or null for all), got {value}.")
    if cfg.export.imatrix_questions < 1:
        raise UserError(f"export.imatrix_questions must be at least 1, got {cfg.export.imatrix_questions}; use "
                        "export.imatrix=none for no importance matrix.")
    if cfg.train.batch_size < 1 or cfg.train.grad_accum < 1:
        raise UserError("train.batch_size and train.grad_accum must be at least 1.")
    if cfg.rationales.k_shot < 0:
        raise UserError("rationales.k_shot must be >= 0.")
    tc = cfg.train
    if not tc.lr > 0:
        raise UserError(f"train.lr must be a positive number, got {tc.lr}; the paper uses 5e-5.")
    if not tc.epochs > 0:
        raise UserError(f"train.epochs must be above 0, got {tc.epochs}; use `tinyllm-distill eval` to score a model "
                        "without training.")
    if tc.max_steps is not None and tc.max_steps < 1:
        raise UserError(f"train.max_steps must be at least 1 (or null for all epochs), got {tc.max_steps}.")
    for key in ("micro_batch_tokens", "max_length", "log_every"):
        if getattr(tc, key) < 1:
            raise UserError(f"train.{key} must be at least 1, got {getattr(tc, key)}.")
    if cfg.export.qat_questions < 0:
        raise UserError(f"export.qat_questions must be >= 0 (0 = no quantization-aware pass), got "
                        f"{cfg.export.qat_questions}.")
    if cfg.export.gptq_questions < 0:
        raise UserError(f"export.gptq_questions must be >= 0 (0 = nearest rounding), got {cfg.export.gptq_questions}.")
    if not cfg.export.gptq_damp > 0:
        raise UserError(f"export.gptq_damp must be above 0 (a fraction of the Hessian's mean diagonal, e.g. 0.01), got "
                        f"{cfg.export.gptq_damp}.")
    if cfg.export.adapter_rank < 0:
        raise UserError(f"export.adapter_rank must be >= 0 (0 = no adapter), got {cfg.export.adapter_rank}.")
    for key in ("eval_every", "save_every", "ce_chunk_tokens"):
        if getattr(tc, key) < 0:
            raise UserError(f"train.{key} must be >= 0 (0 = off), got {getattr(tc, key)}.")
    if tc.epoch_eval:
        if cfg.data.eval_split == cfg.data.test_split:
            raise UserError(f"train.epoch_eval picks the epoch on data.eval_split, which is the test split "
                            f"('{cfg.data.test_split}') here; set data.eval_split=valid so the test split is only "
                            "reported.")
        needs = {"loglik": "loglik", "loglik_sum": "loglik", "em": "generate", "option_match": "generate"}[tc.select_by]
        if tc.eval_method not in (needs, "both"):
            raise UserError(f"train.select_by={tc.select_by} needs train.eval_method={needs} or both "
                            f"(it is {tc.eval_method}).")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def write_resolved(cfg: Config, out_dir: str | os.PathLike) -> Path:
    """Write the resolved config next to an output, so every result says what made it."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output_dir {out} is a file, not a folder; set output_dir=<folder> (a new or existing folder).")
    if out.is_symlink() and not out.exists():
        raise UserError(f"output_dir {out} is a link to {os.readlink(out)}, which does not exist; create that folder "
                        "or remove the link.")
    out.mkdir(parents=True, exist_ok=True)
    path = out / layout.RESOLVED_CONFIG
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    return path
