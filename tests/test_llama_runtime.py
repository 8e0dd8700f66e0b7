"""llama.cpp on this CPU: real packaged quantized GGUFs generate, and a crash in llama.cpp is one sentence.

Run: pytest tests/test_llama_runtime.py

The first test is in the default suite on purpose: on a CPU where the installed llama-cpp-python build
crashes (llama.cpp's AMX kernels on Intel Xeons with AMX), CI fails here, not only in the slow suite.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def test_llama_cpp_generates_with_the_packaged_quantized_ggufs():
    """SmolLM2-135M-Instruct Q4_1 and Gemma 3 270M Q4_K_M, each generating greedily in its own process."""
    r = subprocess.run([sys.executable, "-m", "distill.llama_runtime", "--check"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "llama_kv_cache" not in r.stderr  # llama.cpp's own loading lines (Gemma 3's SWA note) stay quiet
    lines = r.stdout.splitlines()
    assert lines[0].startswith("llama.cpp generates on this CPU (")
    assert any("SmolLM2-135M-Instruct.Q4_1.gguf: 8 tokens" in ln for ln in lines), r.stdout
    assert any("Q4_K_M" in ln.upper() and ": 8 tokens" in ln for ln in lines if "SmolLM2" not in ln), r.stdout


def test_greedy_generation_through_the_child_is_deterministic_text():
    from distill.llama_runtime import call
    from distill.models import resolve_gguf

    path = str(resolve_gguf("smollm2-135m-instruct"))
    a = call("distill.llama_runtime:generate", "generating", path=path, prompt="1, 2, 3, 4,", max_tokens=6)
    b = call("distill.llama_runtime:generate", "generating", path=path, prompt="1, 2, 3, 4,", max_tokens=6)
    assert a["tokens"] == 6 and a["text"] == b["text"] and "5" in a["text"]


def test_the_installed_build_has_no_amx_kernels():
    """setup.sh builds with -mno-amx-*: llama.cpp's AMX kernels crash (upstream llama.cpp #20824)."""
    from distill.llama_runtime import system_info

    info = system_info()
    assert "CPU" in info and "AMX_INT8 = 1" not in info, info


@pytest.mark.parametrize("target, kwargs, signame", [("os:abort", {}, "SIGABRT"),
                                                     ("ctypes:string_at", {"ptr": 0}, "SIGSEGV")])
def test_a_crash_in_the_child_is_one_sentence_in_the_parent(target, kwargs, signame):
    from distill.llama_runtime import LlamaCrash, call

    with pytest.raises(LlamaCrash) as exc:
        call(target, "testing the crash path", **kwargs)
    msg = str(exc.value)
    assert msg.startswith(f"llama.cpp crashed ({signame}) while testing the crash path") and "\n" not in msg
    if signame == "SIGSEGV":
        assert "bash scripts/setup.sh" in msg  # the rebuild is named


def test_a_python_error_in_the_child_comes_back_with_its_traceback():
    from distill.llama_runtime import call

    with pytest.raises(RuntimeError, match="JSONDecodeError"):
        call("json:loads", "parsing", s="{")
    assert call("json:loads", "parsing", s="[1, 2]") == [1, 2]


def test_check_names_the_fix_when_llama_cpp_crashes(monkeypatch, capsys, tmp_path):
    import distill.llama_runtime as rt

    def crash(target, what, **kw):
        raise rt.LlamaCrash(f"llama.cpp crashed (SIGSEGV) while {what}: {rt.crash_fix(-11, '')}.")

    monkeypatch.setattr(rt, "call", crash)
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"GGUF" + bytes(60))  # looks like a GGUF to the path check; llama.cpp never opens it here
    assert rt.main(["--check", str(fake)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: llama.cpp crashed (SIGSEGV) while generating") and rt.REBUILD in err
    assert err.count("\n") == 1


def test_setup_keys_its_llama_cpp_wheel_on_cpu_and_flags():
    """pip's wheel cache keys on name and version only; setup.sh must key on the build flags and the CPU
    too, and build without AMX kernels."""
    text = (Path(__file__).parent.parent / "scripts" / "setup.sh").read_text()
    key_line = text[text.index("LLAMA_KEY=$("):text.index("sha256sum")]
    for part in ("$CMAKE_ARGS", "$LLAMA_CFLAGS", "$LLAMA_CXXFLAGS", "$CPU_FLAGS", "$LLAMA_VERSION"):
        assert part in key_line
    assert "-mno-amx-int8 -mno-amx-tile -mno-amx-bf16" in text and "--no-cache-dir" in text
    assert "python -m distill.llama_runtime --check" in text
