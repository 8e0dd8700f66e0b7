"""llama.cpp in a process of its own: the check setup ends with, and crash isolation for the stages.

llama.cpp is native code that can kill the process that loads it, with no Python exception to catch:
- a build whose kernels this CPU cannot run: llama.cpp's AMX kernels on Intel Xeons with AMX
  (SIGSEGV in ggml_backend_amx_mul_mat, upstream llama.cpp #20824), or a `-march=native` build
  made on another CPU (SIGILL);
- a GGUF it cannot use, e.g. a vocabulary without the byte tokens its tokenizer looks up
  (std::out_of_range from llama_vocab::byte_to_token: SIGABRT).
Work that may die so runs through `call()` in a child Python process: its death becomes one sentence
(`LlamaCrash`) naming the cause and the fix, and the caller keeps its files and its own process.

    python -m distill.llama_runtime --check            # setup's last step: generate with the packaged GGUFs
    python -m distill.llama_runtime --check FILE.gguf  # the same with your own file
"""
from __future__ import annotations

import collections
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from distill.errors import UserError

REBUILD = "rm -f .venv/tinyllm-llama-cpp-build && bash scripts/setup.sh"


class LlamaCrash(UserError):
    """llama.cpp killed the child process it ran in; the message says why and what to do."""


def cpu_model() -> str:
    """The CPU's model name, as every benchmark result states it (`lscpu`'s "Model name")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def system_info() -> str:
    """What the installed llama.cpp build uses (`AVX512 = 1 | AMX_INT8 = 1 | …`); imports llama_cpp."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _last_error_line(tail: str) -> str:
    """The native library's own last words (`what():  unordered_map::at`), if it left any."""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip() and not ln.startswith("[")]
    for ln in reversed(lines):
        if "what()" in ln or "error" in ln.lower() or "terminate" in ln:
            return ln[:200]
    return ""


def crash_fix(rc: int, tail: str) -> str:
    """The likeliest cause of a llama.cpp crash with this exit and these last stderr lines, and its fix."""
    sig = -rc
    if sig == signal.SIGABRT and ("out_of_range" in tail or "unordered_map::at" in tail or "byte_to_token" in tail):
        return ("llama.cpp could not find a token its tokenizer needs in the file's vocabulary, so the GGUF's tokenizer "
                "was written wrong; the export's files are kept for a bug report")
    if sig in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS):
        amx = "amx_int8" in cpu_flags()
        if sig == signal.SIGILL:
            cause = "the llama-cpp-python build uses instructions this CPU lacks (it was built on another CPU)"
        elif amx:
            cause = ("this CPU has AMX, and a llama-cpp-python build with llama.cpp's AMX kernels crashes in them "
                     "(upstream llama.cpp #20824)")
        else:
            cause = "the llama-cpp-python build may not match this CPU"
        return f"{cause}; rebuild it for this CPU with `{REBUILD}` (setup builds without the AMX kernels)"
    return "the lines above are llama.cpp's last output"


def call(target: str, what: str, timeout: float | None = None, **kwargs):
    """`module:function(**kwargs)` run in a fresh Python process; returns its result (JSON-able both ways).
    The child's stderr (progress lines) is relayed as it comes. If the child dies of a signal or an abort,
    raises LlamaCrash: "llama.cpp crashed (SIGSEGV) while <what>: <cause>; <fix>." A Python exception in
    the child that is a UserError is raised again here with its message; any other is a RuntimeError."""
    with tempfile.TemporaryDirectory(prefix="tinyllm-llama-") as tmp:
        args_file, result_file = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_file.write_text(json.dumps(kwargs))
        proc = subprocess.Popen([sys.executable, "-m", "distill.llama_runtime", "--call", target, str(args_file),
                                 str(result_file)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                cwd=os.getcwd())
        tail: collections.deque[bytes] = collections.deque(maxlen=64)

        def relay():
            for chunk in iter(lambda: os.read(proc.stderr.fileno(), 4096), b""):
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                tail.append(chunk)

        pump = threading.Thread(target=relay, daemon=True)
        pump.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pump.join()
            raise LlamaCrash(f"llama.cpp did not finish {what} within {timeout:.0f}s; it was stopped.") from None
        pump.join()
        text = b"".join(tail).decode(errors="replace")
        if rc < 0:
            detail = _last_error_line(text)
            raise LlamaCrash(f"llama.cpp crashed ({_signal_name(rc)}) while {what}"
                             + (f" ({detail})" if detail else "") + f": {crash_fix(rc, text)}.")
        if not result_file.exists():
            raise RuntimeError(f"the llama.cpp worker for {what} exited {rc} without a result:\n{text[-2000:]}")
        result = json.loads(result_file.read_text())
    if "user_error" in result:
        raise UserError(result["user_error"])
    if "error" in result:
        raise RuntimeError(f"the llama.cpp worker for {what} failed:\n{result['error']}")
    return result["value"]


def open_gguf(path, n_ctx: int = 2048, threads: int | None = None, lora: str | None = None, **kwargs):
    """llama-cpp-python's `Llama` for a GGUF file, opened the one way every stage opens one (teachers,
    students, parity, setup's check), with `lora` (a LoRA adapter GGUF, export.adapter_rank) added at load:
    decoding on every core (llama-cpp-python's own default is half),
    and quiet — what llama.cpp prints while it loads (Gemma 3's `llama_kv_cache_iswa` note, for one) goes
    to a log that is shown only if loading fails."""
    from distill.errors import require
    from distill.progress import captured

    llama_cpp = require("llama_cpp", "llama-cpp-python")
    with tempfile.NamedTemporaryFile(prefix="tinyllm-llama-", suffix=".log") as fh:
        try:
            with captured(Path(fh.name)):
                return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                                       verbose=False, **({"lora_path": str(lora)} if lora else {}), **kwargs)
        except Exception:
            sys.stderr.write(Path(fh.name).read_text(errors="replace")[-4000:])
            raise


def generate(path: str, prompt: str = "The capital of France is", max_tokens: int = 8, threads: int | None = None) -> dict:
    """A few greedy tokens from a GGUF (what `--check` runs in its child)."""
    llm = open_gguf(path, n_ctx=256, threads=threads)
    try:
        t0 = time.perf_counter()
        r = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        seconds = time.perf_counter() - t0
    finally:
        llm.close()
    n = r["usage"]["completion_tokens"]
    return {"text": r["choices"][0]["text"], "tokens": n, "tok_per_s": n / seconds if seconds else 0.0,
            "system_info": system_info()}


def check(paths: list[str] | None = None) -> list[dict]:
    """Generate a few tokens from each GGUF (default: the packaged SmolLM2 Q4_1 and Gemma 3 Q4_K_M), each in
    its own child process; raises LlamaCrash with the fix when llama.cpp cannot run on this CPU."""
    from distill.models import PACKAGED, resolve_gguf

    files = [str(resolve_gguf(p)) for p in (paths or list(PACKAGED))]
    out = []
    for f in files:
        r = call("distill.llama_runtime:generate", f"generating a few tokens from {Path(f).name} on this CPU "
                 f"({cpu_model()})", path=f)
        if r["tokens"] == 0:
            raise UserError(f"llama.cpp loaded {f} but generated nothing; the build or the file is broken.")
        out.append({"file": f, **r})
    return out


def _child(target: str, args_file: str, result_file: str) -> int:
    module, func = target.split(":")
    try:
        value = getattr(importlib.import_module(module), func)(**json.loads(Path(args_file).read_text()))
        result = {"value": value}
    except UserError as exc:
        result = {"user_error": str(exc)}
    except Exception:  # reported by the parent with this traceback
        import traceback

        result = {"error": traceback.format_exc()}
    Path(result_file).write_text(json.dumps(result))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--call"] and len(argv) == 4:
        return _child(*argv[1:])
    if argv[:1] == ["--check"]:
        try:
            results = check(argv[1:] or None)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"llama.cpp generates on this CPU ({cpu_model()}):")
        for r in results:
            print(f"  {Path(r['file']).name}: {r['tokens']} tokens, {r['tok_per_s']:.0f} tok/s: {r['text']!r}")
        amx = [p for p in results[0]["system_info"].split("|") if "AMX" in p]
        print(f"  build: {' '.join(p.strip() for p in amx) or 'no AMX kernels'}")
        return 0
    print(__doc__.split("\n\n")[-1].rstrip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
