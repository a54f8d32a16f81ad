"""The checks run in the scratch venv, each a subprocess with its own log: the install, the capability check
(what each `perf` switch needs of the libraries, coz_train/perf/capabilities.py), the perf equality tests, the
smoke run with perf=plain and perf=fast, and the tiny benchmark.

Every check runs single-threaded and offline (OMP_NUM_THREADS=1, HF_HUB_OFFLINE=1, wandb offline), as a run
would: a switch whose seams hold on the releases tried starts there, one whose seams changed is refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from coz_train.compat.venv import venv_python

CHECKS = ("capabilities", "perf-tests", "smoke-plain", "smoke-fast", "bench")
TITLES = {"install": "install (pip, constraints with the new releases)",
          "capabilities": "capability check (perf seams)",
          "perf-tests": "perf equality tests (tests/perf)", "smoke-plain": "smoke run, perf=plain",
          "smoke-fast": "smoke run, perf=fast", "bench": "tiny benchmark"}


@dataclass
class CheckRun:
    name: str
    commands: list[list[str]]  # run in turn; the first that fails ends the check
    log: Path
    returncode: int | None = None  # None: not run
    seconds: float = 0.0
    timed_out: bool = False
    junit: Path | None = None

    @property
    def passed(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 15) -> str:
        """The last lines of the log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def check_command(name: str, python: Path, logs: Path, keyword: str | None = None) -> tuple[list[str], Path | None]:
    """(command, the file it writes its results to or None) of one check: the capability check's JSON, the perf
    tests' junit XML."""
    py = str(python)
    if name == "capabilities":
        report = logs / "capabilities.json"
        return [py, "-m", "coz_train.perf.capabilities", f"--json={report}"], report
    if name == "perf-tests":
        junit = logs / "perf-tests.xml"
        # --continue-on-collection-errors: a test file that fails to import breaks its switch; the others still run
        command = [py, "-m", "pytest", "tests/perf", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                   f"--junitxml={junit}"]
        return [*command, "-k", keyword] if keyword else command, junit
    if name == "smoke-plain":
        return [py, "-m", "coz_train", "+experiment=smoke", f"hydra.run.dir={logs / name}"], None
    if name == "smoke-fast":
        return [py, "-m", "coz_train", "+experiment=smoke", "perf=fast", f"hydra.run.dir={logs / name}"], None
    if name == "bench":
        return [py, "-m", "coz_train.bench", f"hydra.run.dir={logs / name}"], None
    raise ValueError(f"unknown check {name!r}; choose from {', '.join(CHECKS)}.")


def check_environment(venv: Path) -> dict[str, str]:
    """The environment of every check: the scratch venv first on PATH, single-threaded, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               VIRTUAL_ENV=str(venv), PATH=f"{venv_python(venv).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


def run_check(run: CheckRun, cwd: Path, env: dict[str, str], timeout: float) -> CheckRun:
    """Run the check's commands in turn with their output in its log; a check past `timeout` seconds in all
    is stopped (the process group of its command: the command and what it started)."""
    run.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with run.log.open("w") as log:
        for command in run.commands:
            log.write(f"$ {' '.join(command)}\n(in {cwd})\n\n")
            log.flush()
            proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                run.returncode = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                run.timed_out = True
                stop(proc)
                run.returncode = proc.returncode if proc.returncode is not None else -signal.SIGKILL
                log.write(f"\ncompat: stopped after {timeout:.0f} s (--timeout)\n")
            except BaseException:  # Ctrl-C: the check's processes go with the command
                stop(proc)
                raise
            log.write("\n")
            if run.returncode != 0:
                break
    run.seconds = time.monotonic() - start
    return run


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group the check started, SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
