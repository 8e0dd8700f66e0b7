"""Progress and log lines in one format for every stage.

`[task] 00012/00040 (30.0%) | … | elapsed 1m05s | eta 2m30s`.

Everything goes to stderr (stdout is for a command's result, e.g. JSON), flushed at once so a log
file or a parent process relaying the lines sees them as they happen.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def captured(log_file: Path | None):
    """Everything written to stdout and stderr inside — Python's warnings and loggers, and native libraries
    writing to the file descriptors — goes to `log_file` (appended) instead of the terminal; None: untouched.
    For third-party tools whose chatter (tracer warnings, a line per tensor) would bury our own lines."""
    if log_file is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "ab") as fh:
        try:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def format_duration(seconds: float) -> str:
    """`5s`, `2m05s`, `1h07m`: how every progress line states elapsed time and ETA."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(task: str, done: int, total: int, fields: list[str], elapsed: float, eta: float, noun: str = "") -> str:
    width = max(5, len(str(total)))
    pct = 100.0 * done / total if total else 100.0
    head = f"[{task}] {noun + ' ' if noun else ''}{done:0{width}d}/{total:0{width}d} ({pct:.1f}%)"
    return " | ".join([head, *fields, f"elapsed {format_duration(elapsed)}", f"eta {format_duration(eta)}"])


class Progress:
    """Counts items (questions, prompts) and prints a progress line at most every `every_s` seconds,
    with the rate in items per second and, when tokens are counted, tokens per second."""

    def __init__(self, task: str, total: int, log=log, every_s: float = 5.0, unit: str = "q"):
        self.task, self.total, self.log, self.every, self.unit = task, total, log, every_s, unit
        self.n = self.tokens = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1, tokens: int = 0) -> None:
        self.n += n
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last >= self.every or self.n == self.total:
            self.last = now
            self.log(self.line())

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.n / elapsed if elapsed else 0.0
        eta = (self.total - self.n) / rate if rate else 0.0
        fields = [f"{rate:.2f} {self.unit}/s"] + ([f"{self.tokens / elapsed:.0f} tok/s"] if self.tokens and elapsed else [])
        return progress_line(self.task, self.n, self.total, fields, elapsed, eta)

    def done(self) -> None:
        if self.n != self.total or self.total == 0:
            self.log(self.line())
