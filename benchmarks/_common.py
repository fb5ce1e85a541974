"""Shared helpers for the benchmarks: measured child runs, machine facts, table printing.

Every contender runs in its own child process so that its peak resident memory is its own:
`run_measured` runs a command, `run_callable` runs a module-level function of a benchmark script
in a fresh Python interpreter. Both return wall-clock seconds (taken by this process around the
child) and the peak RSS of the child's process tree.

Peak RSS follows Linux `ru_maxrss` semantics: the largest resident set of any single process in
the child's tree (e.g. the larger of `tar` and `gzip` in `tar czf`), not the sum of processes that
ran at the same time. With GNU time (`/usr/bin/time`, Debian package `time`) it is its `%M`;
without it a small Python wrapper reports `getrusage(RUSAGE_CHILDREN).ru_maxrss`, which is the
same number.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_MARKER = "@@BENCH-RESULT@@ "

# Runs argv[2:]; writes "wall maxrss_kib user sys" of its process tree to the file argv[1], the
# same fields GNU time writes for TIME_FORMAT.
_WRAPPER = """\
import resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    out.write("%.2f %d %.2f %.2f" % (wall, ru.ru_maxrss, ru.ru_utime, ru.ru_stime))
sys.exit(rc)
"""
TIME_FORMAT = "%e %M %U %S"

# Loads a benchmark script by path (not as __main__), calls one function with JSON arguments and
# prints its JSON result after RESULT_MARKER.
_BOOTSTRAP = """\
import importlib.util, json, sys
path, name, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, path.rsplit("/", 1)[0])
spec = importlib.util.spec_from_file_location("_bench_child", path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
result = getattr(module, name)(*args)
sys.stdout.write("\\n%s%s\\n" % (sys.argv[4], json.dumps(result)))
"""


class ChildFailed(RuntimeError):
    pass


@dataclass
class Measured:
    """One child run: wall seconds seen by the parent, peak RSS and CPU of its tree, its output."""

    seconds: float
    peak_rss_kb: int
    cpu_seconds: float  # user + system of the whole tree (all threads, reaped children)
    returncode: int
    stdout: str
    stderr: str
    result: Any = None  # what a callable returned (run_callable only)

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kb / 1024


def gnu_time() -> str | None:
    """Path of GNU time if installed (the shell keyword `time` cannot report memory)."""
    path = shutil.which("time")
    if not path:
        return None
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return None
    return path if "GNU" in (out.stdout + out.stderr) else None


def measurement_method() -> str:
    path = gnu_time()
    if path:
        return f"GNU time ({path} -f '{TIME_FORMAT}')"
    return "Python wrapper: getrusage(RUSAGE_CHILDREN).ru_maxrss"


def run_measured(
    cmd: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> Measured:
    """Run `cmd` in a child; return wall seconds and the peak RSS of its process tree."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-", suffix=".txt") as report:
        timer = gnu_time()
        if timer:
            wrapped = [timer, "-f", TIME_FORMAT, "-o", report.name, *cmd]
        else:
            wrapped = [sys.executable, "-c", _WRAPPER, report.name, *cmd]
        start = time.perf_counter()
        proc = subprocess.run(
            wrapped,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        seconds = time.perf_counter() - start
        report.seek(0)
        lines = report.read().strip().splitlines()
    # GNU time prefixes "Command exited with non-zero status N"; the figures are the last line.
    fields = lines[-1].split() if lines else []
    try:
        peak, cpu = int(fields[1]), float(fields[2]) + float(fields[3])
    except (IndexError, ValueError):
        peak, cpu = 0, 0.0
    measured = Measured(seconds, peak, cpu, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise ChildFailed(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return measured


def run_callable(
    func: Callable[..., Any],
    *args: Any,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Measured:
    """Call a module-level function of a benchmark script in a fresh interpreter.

    The function's file is imported by path (its `__main__` block does not run), its folder is on
    `sys.path`, arguments and the return value travel as JSON. Seconds include interpreter start
    and imports; time the interesting part inside the function and return it.
    """
    path = func.__code__.co_filename
    cmd = [
        sys.executable,
        "-c",
        _BOOTSTRAP,
        path,
        func.__name__,
        json.dumps(list(args)),
        RESULT_MARKER,
    ]
    measured = run_measured(cmd, cwd=cwd, env=env, timeout=timeout)
    for line in reversed(measured.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            measured.result = json.loads(line[len(RESULT_MARKER) :])
            break
    else:
        raise ChildFailed(f"{func.__name__} printed no result:\n{measured.stdout[-2000:]}")
    return measured


def clean_env(drop_prefixes: Sequence[str] = (), **extra: str) -> dict[str, str]:
    """This process's environment without variables starting with `drop_prefixes`, plus `extra`.

    Without PYTHONDONTWRITEBYTECODE too: an installed package has its bytecode (pip compiles it),
    while an editable checkout run with it set compiles the package on every call (`list`:
    median 1.41 s against 1.22 s, five pairs taken in turns), a cost no installation pays.
    """
    drop = (*drop_prefixes, "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """CPU, memory, OS and tool versions, for the record next to a table."""
    facts = {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu_model(),
        "memory": _mem_total(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "tar": _first_line(["tar", "--version"]),
        "rss measured by": measurement_method(),
        "page reporting": page_reporting(),
    }
    facts.update(extra or {})
    return facts


_PAGE_REPORTING = Path("/sys/module/page_reporting/parameters")
_COUNTERS = {"reported_kib", "passes", "walked"}


def page_reporting() -> str:
    """Whether the guest hands free memory back to the host (virtio-balloon free page reporting).

    On the VMs here it does, and the next write into the page cache then faults that memory back
    in at the host, slowly; measured here, it slowed two writers at once far more than one.
    """
    if not _PAGE_REPORTING.is_dir():
        return "none"
    values = {
        path.name: path.read_text().strip()
        for path in sorted(_PAGE_REPORTING.iterdir())
        if path.name not in _COUNTERS and path.is_file()
    }
    return "on (" + ", ".join(f"{k}={v}" for k, v in values.items()) + ")"


def reported_gib() -> float | None:
    """GiB handed back to the host since boot (None: no page reporting)."""
    try:
        return int((_PAGE_REPORTING / "reported_kib").read_text()) / 1024 / 1024
    except (OSError, ValueError):
        return None


def tool_version(cmd: Sequence[str]) -> str:
    """First line a tool prints for its version flag."""
    return _first_line(cmd)


def _mem_total() -> str:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; numeric columns are right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        all(_looks_numeric(row[i]) for row in cells) if cells else False
        for i in range(len(headers))
    ]

    def fmt(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([fmt(list(headers)), rule, *(fmt(row) for row in cells)])


def _looks_numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace("x", "").replace("%", "").strip()
    if stripped in ("", "-", "—"):
        return True
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def facts_block(facts: Mapping[str, str]) -> str:
    width = max(len(k) for k in facts)
    return "\n".join(f"{k.ljust(width)} : {v}" for k, v in facts.items())


def load_average() -> str:
    """The 1/5/15-minute load averages; other work on the machine skews wall-clock figures."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# Two jobs, each run in a fresh interpreter: CPU-bound (SHA-256 over the same 1 MiB, about a
# second), and writing 768 MiB into a new file (page cache) then deleting it (argv[1]: folder).
_CPU_JOB = (
    "import hashlib; h = hashlib.sha256(); d = bytes(1 << 20)\nfor _ in range(1200): h.update(d)"
)
_WRITE_JOB = """\
import sys, tempfile
block = b"1" * (1 << 20)
with tempfile.NamedTemporaryFile(dir=sys.argv[1]) as out:
    for _ in range(768):
        out.write(block)
"""


def two_core_check(folder: str | Path, rounds: int = 3) -> str:
    """Each job alone, then two at once (medians of `rounds`). On two full cores both take the
    same time; when the host lends less, "two at once" is slower, and so is every parallel
    contender against a serial one. Restores write gigabytes: the write job shows the page
    cache's side (on the VMs here it swings far more than the CPU's)."""

    def timed(code: str, copies: int) -> float:
        start = time.perf_counter()
        jobs = [
            subprocess.Popen([sys.executable, "-c", code, str(folder)]) for _ in range(copies)
        ]
        if any(job.wait() for job in jobs):
            raise ChildFailed("a job of the two-core check failed")
        return time.perf_counter() - start

    figures = []
    for name, code in (("CPU", _CPU_JOB), ("file writes", _WRITE_JOB)):
        alone, paired = [], []
        for _ in range(rounds):
            alone.append(timed(code, 1))
            paired.append(timed(code, 2))
        one, two = median(alone), median(paired)
        figures.append(f"{name} one {one:.2f} s, two at once {two:.2f} s ({two / one:.2f}x)")
    return "; ".join(figures)


def git_revision(repo: str | Path, paths: Sequence[str] = ()) -> str:
    """Short HEAD of `repo`, noting uncommitted changes under `paths` (the code measured)."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=False
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--", *paths)
    count = len(dirty.splitlines())
    return (
        f"{head} + {count} uncommitted file(s) in {', '.join(paths) or 'the tree'}"
        if count
        else head
    )
