"""The student as a GGUF file for llama.cpp: written with gguf.GGUFWriter, quantized by llama.cpp.

We write f16 ourselves (tensor names from gguf's own maps, q/k permuted for llama.cpp's rotary
layout, the tokenizer's vocabulary and merges, the student's prompt format as chat template and
metadata), then quantize with llama.cpp's quantizer (`llama_model_quantize`) to what people ship.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from distill import layout
from distill.errors import UserError, require
from distill.models import PRE_TOKENIZERS
from distill.progress import captured

QUANTS = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q6_k": "MOSTLY_Q6_K", "q5_k_m": "MOSTLY_Q5_K_M",
          "q5_0": "MOSTLY_Q5_0", "q4_k_m": "MOSTLY_Q4_K_M", "q4_1": "MOSTLY_Q4_1", "q4_0": "MOSTLY_Q4_0"}
TENSOR_TYPES = ("f16", "q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "q3_k", "q2_k")
"""What export.tensor_types may set a tensor to (GGML type names, as llama-quantize's --tensor-type takes them)."""
SUPPORTED = {"LlamaForCausalLM": "LLAMA", "Qwen2ForCausalLM": "QWEN2", "Gemma3ForCausalLM": "GEMMA3"}


def check_supported(config: dict) -> str:
    """Refuse unsupported students up front, in one sentence that lists what is supported."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED:
        raise UserError(f"GGUF export supports {', '.join(SUPPORTED)} students; this one is {arch}.")
    return arch


def tensor_type_pairs(spec: str) -> list[tuple[str, str]]:
    """export.tensor_types ("PATTERN=TYPE,PATTERN=TYPE") as (pattern, type) pairs; one sentence on a bad one."""
    pairs = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        pattern, _, kind = item.rpartition("=")
        kind = kind.strip().lower()
        if not pattern or kind not in TENSOR_TYPES:
            raise UserError(f"export.tensor_types: '{item}' is not PATTERN=TYPE with TYPE one of {', '.join(TENSOR_TYPES)}; "
                            "e.g. ffn_down=q8_0.")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UserError(f"export.tensor_types: '{pattern}' is not a regular expression ({exc}).") from None
        pairs.append((pattern, kind))
    return pairs


def check_tensor_types(f16: Path, pairs: list[tuple[str, str]]) -> None:
    """Every pattern must match a matrix of the file, else it is a typo that would silently change nothing."""
    from gguf import GGUFReader

    names = [t.name for t in GGUFReader(str(f16)).tensors if len(t.shape) == 2]
    for pattern, _ in pairs:
        if not any(re.search(pattern, n) for n in names):
            raise UserError(f"export.tensor_types: '{pattern}' matches none of this student's matrices; their names "
                            f"look like {names[0]}, blk.0.ffn_down.weight.")


def held_types(path: Path) -> dict[str, str]:
    """GGUF tensor name -> the type the file holds it in (`Q4_0`, `Q8_0`, `F32`, …)."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def variant(quant: str, rank: int = 0, qat: int = 0, tensor_types: str = "", gptq: int = 0) -> str:
    """The export's name after its format (folder gguf-<variant>, bench contestant student-gguf-<variant>):
    q4_0, q4_1-r16, q4_0-qat500, q4_0-ffn_down.q8_0, q5_0-gptq1000 …"""
    tt = "".join(f"-{re.sub(r'[^A-Za-z0-9_]+', '_', p).strip('_')}.{k}" for p, k in tensor_type_pairs(tensor_types))
    return quant + tt + (f"-r{rank}" if rank else "") + (f"-qat{qat}" if qat else "") + (f"-gptq{gptq}" if gptq else "")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores rotary halves side by side; llama.cpp interleaves them (as its converter does)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def chat_template(student: Path) -> str:
    """A Jinja chat template that asks the student its way: the user turn is the rendered question."""
    from distill.student import PromptFormat

    fmt = PromptFormat.load(student)
    head, tail = (json.dumps(x) for x in fmt.wrap(fmt.answer_prefix, "Answer:"))
    return ("{{ " + head + " }}{% for message in messages %}{% if message['role'] == 'user' %}"
            "{{ message['content'] }}{% endif %}{% endfor %}{{ " + tail + " }}")


OLLAMA_NUM_CTX = 2048  # the context every TinyLLM llama.cpp path answers in (bench, --quant auto)


def modelfile(student: Path, gguf_name: str, adapter: str | None = None) -> str:
    """An Ollama Modelfile that asks the student its way: TEMPLATE = the stored prompt format around the
    user's message (the question block), greedy, one line, as bench scores it; `adapter`: the LoRA file
    (export.adapter_rank) Ollama adds to the base."""
    from distill.student import PromptFormat

    fmt = PromptFormat.load(student)
    head, tail = fmt.wrap(fmt.answer_prefix, "Answer:")
    for part in (head, tail):
        if '"""' in part:
            raise UserError(f"{student}/{layout.PROMPT_FORMAT}: the prompt format contains \"\"\"\", which an Ollama "
                            "Modelfile cannot quote; change the task prefix.")
    return "\n".join([
        "# Ollama: ollama create tinyllm-student -f Modelfile && ollama run tinyllm-student",
        "# The user message is the question block (Q: …\\nAnswer Choices:\\n(a) …); the template adds the task",
        "# prefix and the answer cue; the student replies with the text of the option it picks, on one line.",
        f"FROM ./{gguf_name}",
        *([f"ADAPTER ./{adapter}"] if adapter else []),
        f'TEMPLATE """{head}{{{{ .Prompt }}}}{tail}"""',
        'PARAMETER stop "\\n"',
        "PARAMETER temperature 0",
        "PARAMETER repeat_penalty 1",  # Ollama's default 1.1 changes greedy answers; the student was scored without
        f"PARAMETER num_ctx {OLLAMA_NUM_CTX}",
        "PARAMETER num_predict 32",
        ""])


def _pre_tokenizer(student: Path, tok_cfg: dict, hf_cfg: dict) -> str:
    if tok_cfg.get("gguf_pre") in PRE_TOKENIZERS:
        return tok_cfg["gguf_pre"]
    model_type = hf_cfg.get("model_type")
    if model_type == "qwen2":
        return "qwen2"
    if model_type == "llama" and hf_cfg.get("vocab_size") == 49152:
        return "smollm"  # SmolLM/SmolLM2's tokenizer (digits split one by one)
    if model_type == "llama" and hf_cfg.get("vocab_size", 0) >= 128000:
        return "llama-bpe"
    raise UserError(f"{student}: cannot tell which llama.cpp pre-tokenizer its tokenizer needs; "
                    f"add \"gguf_pre\": one of {', '.join(PRE_TOKENIZERS)} to tokenizer_config.json.")


def _adds_bos(tok_json: dict, tok_cfg: dict) -> bool:
    if tok_cfg.get("add_bos_token") is not None:
        return bool(tok_cfg["add_bos_token"])
    post = tok_json.get("post_processor") or {}
    single = post.get("single") or []
    return post.get("type") == "TemplateProcessing" and bool(single) and "SpecialToken" in single[0]


def _add_spm_vocab(w, tokens: list[str], types: list, merges: list[str], tok_json: dict) -> None:
    """A SentencePiece ("llama") vocabulary for llama.cpp from a "▁"-BPE tokenizer with byte fallback: each
    piece's score ranks the first merge that makes it (llama.cpp merges the best-scoring pair first, as the
    BPE applies its merges in order), `<0xXX>` pieces are byte tokens, the unknown piece is typed so."""
    import gguf

    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        left, right = m.split(" ", 1)
        rank.setdefault(left + right, r)
    floor = -float(len(merges) + 1)
    scores = [-float(rank[t]) if t in rank else floor for t in tokens]
    unk = tok_json["model"].get("unk_token")
    for i, t in enumerate(tokens):
        if types[i] == gguf.TokenType.NORMAL and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types[i] = gguf.TokenType.BYTE
        elif t == unk:
            types[i] = gguf.TokenType.UNKNOWN
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(False)


def _steps(node) -> list[str]:
    """The step types of a tokenizer.json pre-tokenizer, normalizer or decoder, Sequences flattened."""
    if not isinstance(node, dict):
        return []
    inner = node.get("pretokenizers") or node.get("normalizers") or node.get("decoders")
    if node.get("type") == "Sequence" and isinstance(inner, list):
        return [t for n in inner for t in _steps(n)]
    return [node.get("type")]


def tokenizer_kind(student: Path, tok_json: dict) -> str:
    """Which llama.cpp tokenizer model the student's tokenizer is: "gpt2" (byte-level BPE: SmolLM2, Qwen2)
    or "llama" (SentencePiece-style BPE over "▁" with `<0xXX>` byte pieces: Gemma). Told apart by the
    pre-tokenizer and decoder: a byte-level tokenizer may carry `byte_fallback: true` as well (transformers'
    own GGUF loading of SmolLM2 writes one), and taking it for SentencePiece writes a vocabulary without
    the byte tokens that llama.cpp then looks up and aborts on."""
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"{student}/tokenizer.json: GGUF export needs a BPE tokenizer (byte-level, or SentencePiece-"
                        f"style with byte fallback); this one is {model.get('type')}.")
    pre, dec, norm = (_steps(tok_json.get(k)) for k in ("pre_tokenizer", "decoder", "normalizer"))
    if "ByteLevel" in pre or "ByteLevel" in dec:
        return "gpt2"
    spm_signs = "Metaspace" in pre + dec or "Replace" in norm + dec or "ByteFallback" in dec
    if model.get("byte_fallback") and spm_signs:
        vocab = model.get("vocab") or {}
        missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
        if missing:
            raise UserError(f"{student}/tokenizer.json: a SentencePiece-style tokenizer with byte fallback needs the 256 "
                            f"byte pieces <0x00>..<0xFF> in its vocabulary, and {len(missing)} are missing (first "
                            f"{missing[0]}); llama.cpp would abort on the first byte it cannot find. Add them, or "
                            "save the tokenizer as byte-level BPE.")
        return "llama"
    raise UserError(f"{student}/tokenizer.json: cannot tell whether this BPE tokenizer is byte-level (a ByteLevel "
                    f"pre-tokenizer or decoder) or SentencePiece-style (byte_fallback with a Metaspace or \"▁\" "
                    f"Replace step); pre-tokenizer {pre or 'none'}, decoder {dec or 'none'}. GGUF export needs one of "
                    "the two.")


def write_f16(student: Path, out_file: Path) -> dict:
    """Write the student as an f16 GGUF; returns a few facts for the report."""
    gguf = require("gguf")
    from safetensors.numpy import load_file

    hf_cfg = json.loads((student / "config.json").read_text())
    arch_name = SUPPORTED[check_supported(hf_cfg)]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    tok_json = json.loads((student / "tokenizer.json").read_text())
    tok_cfg = json.loads((student / "tokenizer_config.json").read_text())
    spm = tokenizer_kind(student, tok_json) == "llama"
    gemma = arch_name == "GEMMA3"
    fmt_file = student / layout.PROMPT_FORMAT
    fmt = json.loads(fmt_file.read_text()) if fmt_file.exists() else {"answer_prefix": "predict:"}

    n_layer, n_head = hf_cfg["num_hidden_layers"], hf_cfg["num_attention_heads"]
    n_kv = hf_cfg.get("num_key_value_heads", n_head)
    n_embd = hf_cfg["hidden_size"]
    w = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(student.name)
    w.add_context_length(hf_cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(hf_cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    head_dim = hf_cfg.get("head_dim") or n_embd // n_head
    w.add_rope_dimension_count(head_dim)
    if gemma:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        if hf_cfg.get("sliding_window"):
            w.add_sliding_window(hf_cfg["sliding_window"])
    w.add_rope_freq_base(float(hf_cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(hf_cfg["rms_norm_eps"]))
    w.add_vocab_size(hf_cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    # Tokenizer: the vocabulary in id order, merges, and control tokens for the added specials.
    vocab = tok_json["model"]["vocab"]
    added = {t["id"]: t for t in tok_json.get("added_tokens", [])}
    size = max(max(vocab.values()), max(added, default=-1)) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for t, i in vocab.items():
        tokens[i], types[i] = t, gguf.TokenType.NORMAL
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    merges = [" ".join(m) if isinstance(m, list) else m for m in tok_json["model"]["merges"]]
    if spm:
        _add_spm_vocab(w, tokens, types, merges, tok_json)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_pre_tokenizer(student, tok_cfg, hf_cfg))
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
    ids = {t: i for i, t in enumerate(tokens)}
    for role, adder in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                        ("pad_token", w.add_pad_token_id), ("unk_token", w.add_unk_token_id)):
        name = tok_cfg.get(role)
        name = name.get("content") if isinstance(name, dict) else name
        if name in ids:
            adder(ids[name])
    w.add_add_bos_token(_adds_bos(tok_json, tok_cfg))
    w.add_chat_template(chat_template(student))
    w.add_string("tinyllm.prompt_format", json.dumps(fmt))

    # Tensors.
    state = {}
    for f in sorted(student.glob("*.safetensors")):
        state.update(load_file(str(f)))
    names = gguf.get_tensor_name_map(arch, n_layer)
    tied = hf_cfg.get("tie_word_embeddings", False)
    for name, t in state.items():
        if name == "lm_head.weight" and tied:
            continue
        if name.endswith("rotary_emb.inv_freq"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"{student}: tensor {name} has no GGUF name for {arch_name}; this architecture variant is "
                            "not supported.")
        data = t.astype(np.float32)
        if gemma and name.endswith("norm.weight"):
            data = data + 1.0  # Gemma's RMSNorm scales by (1 + w); llama.cpp's by w, as its converter writes it
        elif gemma:
            pass  # Gemma's rotary layout is llama.cpp's NeoX one: q/k as they are
        elif name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        data = data.astype(np.float16) if data.ndim == 2 else data  # norms stay f32, as llama.cpp expects
        w.add_tensor(new, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": arch_name.lower(), "tensors": len(state), "vocab": size}


def quantize(src: Path, dst: Path, quant: str, threads: int = 0, embeddings_q8: bool = False,
             log_file: Path | None = None, imatrix: Path | None = None, tensor_types: str = "") -> None:
    """llama.cpp's own quantizer, in a child process (a file that crashes it is one sentence, not an abort);
    `embeddings_q8` keeps the token embedding and output tensor at q8_0; `imatrix` (export/imatrix.py)
    weighs each column's rounding error by its inputs' mean square; `tensor_types` (export.tensor_types)
    sets the type of the tensors each pattern matches."""
    from distill.llama_runtime import call

    call("export.gguf:quantize_here", f"quantizing {src.name} to {quant}", src=str(src), dst=str(dst), quant=quant,
         threads=threads, embeddings_q8=embeddings_q8, log_file=None if log_file is None else str(log_file),
         imatrix=None if imatrix is None else str(imatrix), tensor_types=tensor_types)


def quantize_here(src: str, dst: str, quant: str, threads: int = 0, embeddings_q8: bool = False,
                  log_file: str | None = None, imatrix: str | None = None, tensor_types: str = "") -> None:
    """(child process) `quantize` itself."""
    src, dst = Path(src), Path(dst)
    llama_cpp = require("llama_cpp", "llama-cpp-python")
    gguf = require("gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(gguf.LlamaFileType, QUANTS[quant]).value
    params.nthread = threads
    pairs = tensor_type_pairs(tensor_types)
    if embeddings_q8:  # after the asked patterns: the first match wins, so a token_embd pattern keeps its type
        pairs += [(r"^token_embd\.weight$", "q8_0"), (r"^output\.weight$", "q8_0")]
    if imatrix is not None:
        from export.imatrix import ctypes_entries, load

        params.imatrix, _alive = ctypes_entries(load(Path(imatrix)))
    if pairs:  # llama.cpp reads the list up to an entry whose pattern is NULL
        overrides = (llama_cpp.llama_model_tensor_override * (len(pairs) + 1))()
        for entry, (pattern, kind) in zip(overrides, pairs):
            entry.pattern, entry.type = pattern.encode(), getattr(llama_cpp, f"GGML_TYPE_{kind.upper()}")
        params.tt_overrides = overrides
    # llama.cpp prints a line per tensor; the parity report says what matters
    with captured(Path(log_file) if log_file is not None else Path(os.devnull)):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise UserError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc}).")
