"""Provenance and markdown helpers shared by the benchmark scripts (machine, versions, commit, sections)."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This tree's tphys and rl before any installed copy: a venv's editable install may point to another checkout (a
# measurement run from a clean worktree would otherwise import the main checkout's code, and be stamped with this tree's
# commit). The scripts import this module before tphys; those that do not put the tree first themselves.
if sys.path[:1] != [str(REPO)]:
    sys.path.insert(0, str(REPO))


def usable_cores() -> int:
    """The cores this process may run on (its affinity; the CPU count where the platform has none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (argparse names the option and the value otherwise)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = float(text)
    if not 0.0 < value < float("inf"):
        raise ValueError(text)
    return value


def write_section(path: Path, key: str, section: str) -> None:
    """Replace the section between the ``key`` markers in ``path`` (append it if absent)."""
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{begin}\n{section}{end}"
    text = path.read_text() if path.exists() else "# tphys benchmarks\n\nWritten by the scripts in `benchmarks/`.\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run_header(title: str, script: str, load_before, started: float, parallelism: str | None = None,
               threads: str | None = None) -> list[str]:
    """The first lines of a results section: title, date, machine, versions, load (and threads), parallelism,
    commit, command line of ``script`` and the duration since ``started`` (``time.perf_counter()``)."""
    load = f"{fmt_load(load_before)} before, {fmt_load(os.getloadavg())} after (1/5/15 min)"
    lines = [f"### {title}", "", f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
             f"- machine: {machine()}", f"- versions: {versions()}",
             f"- threads: {threads}; load: {load}" if threads else f"- load: {load}"]
    if parallelism:
        lines.append(f"- parallelism: {parallelism}")
    return lines + [f"- commit: {git_commit()}", f"- command: `{command_line(script)}`",
                    f"- duration: {time.perf_counter() - started:.0f} s", ""]


def publish(out: Path, key: str, lines: list[str], failures=(), wrote_also: str = "") -> None:
    """Append the failed runs (``learning.launch_all`` error dicts) to ``lines``, print the section and write it into ``out``."""
    if failures:
        lines = [*lines, "", "Failed runs:",
                 *[f"- {f['algo']} {f['env']} {f.get('goal') or ''} seed {f['seed']}: {f['error']}" for f in failures]]
    section = "\n".join(lines) + "\n"
    print(section)
    write_section(out, key, section)
    print(f"wrote {out}{wrote_also}")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    total = meminfo_mib("MemTotal")
    ram = "" if total is None else f", {total / 1024:.1f} GiB RAM"
    usable = usable_cores()
    return f"{model}, {os.cpu_count()} logical cores ({usable} usable){ram}, {platform.system()} {platform.release()}"


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("torch", "torchrl", "tensordict")) + f", Python {platform.python_version()}"


def command_line(script: str) -> str:
    """The command as typed from the current directory, with the thread settings in the environment."""
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ]
    argv = [os.path.relpath(script, Path.cwd()), *sys.argv[1:]]
    return " ".join([*env, "python", *map(shlex.quote, argv)])


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def git_commit() -> str:
    def git(*cmd):
        return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def meminfo_mib(key: str) -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return None
