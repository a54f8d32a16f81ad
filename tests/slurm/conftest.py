"""A real SLURM cluster on localhost for the `slurm`-marked tests.

`slurmctld`, `slurmd` and `munged` (plus `slurmdbd` and a private `mariadbd` when a collected
test asks for accounting through the `slurm_accounting` fixture) run as the current user under a
short temp folder (`/tmp/czs-XXXX`: unix socket paths must stay under 108 characters), on free
ports, writing nothing to /etc or /run. Every daemon is stopped when the session ends, also when
a test or the start fails. Missing binaries FAIL the tests (never skip): CI installs them with

    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server

Set CZS_KEEP=1 to keep the folder (configs, daemon logs, job logs) after the session.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

APT_BASE = ["slurmctld", "slurmd", "slurm-client", "munge"]
APT_ACCOUNTING = ["slurmdbd", "mariadb-server"]
APT_LINE = "apt-get install -y --no-install-recommends " + " ".join(APT_BASE + APT_ACCOUNTING)
BASE_BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo"]
ACCOUNTING_BINARIES = ["slurmdbd", "mariadbd", "mariadb-install-db", "sacct"]
SBIN_DIRS = ["/usr/sbin", "/sbin", "/usr/local/sbin"]

FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "SPECIAL_EXIT",
}
CLIENT_TIMEOUT = 30  # seconds for one sbatch/scontrol/... call


def _which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    return shutil.which(name, path=path)


def _free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def wait_until(predicate: Callable[[], object], timeout: float, what: str, period: float = 0.25):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(period)


@dataclass
class SlurmCluster:
    """One-node SLURM on localhost. `env` is what every client (sbatch, squeue, a job) needs."""

    base: Path
    accounting: bool = False
    env: dict[str, str] = field(default_factory=dict)
    node: str = ""
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    binaries: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        missing = [b for b in BASE_BINARIES + (ACCOUNTING_BINARIES if self.accounting else []) if not _which(b)]
        if missing:
            raise RuntimeError(
                f"SLURM test cluster: {', '.join(missing)} not found. Install the Debian packages "
                f"(as root):\n    {APT_LINE}"
            )
        self.binaries = {b: _which(b) for b in BASE_BINARIES + ACCOUNTING_BINARIES if _which(b)}
        self.node = socket.gethostname().split(".")[0]
        self.user = getpass.getuser()  # root in CI; every daemon and job runs as this user
        for sub in ("etc", "log", "munge", "ctld", "spool", "jobs", "db"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        ctld_port, slurmd_port, dbd_port, db_port = _free_ports(4)
        self.ports = {"slurmctld": ctld_port, "slurmd": slurmd_port, "slurmdbd": dbd_port, "mariadb": db_port}
        self.conf = self.base / "etc" / "slurm.conf"
        self.munge_socket = self.base / "munge" / "munge.sock"
        self.env = {
            **os.environ,
            "SLURM_CONF": str(self.conf),
            "PATH": os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS]),
        }
        # Jobs must not inherit a surrounding job's identity (tests run inside an allocation).
        for key in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if key != "SLURM_CONF":
                del self.env[key]

        self._start_munge()
        if self.accounting:
            self._start_mariadb()
        self._write_slurm_conf()
        if self.accounting:
            self._start_slurmdbd()
        self._spawn("slurmctld", [self.binaries["slurmctld"], "-D", "-c", "-f", str(self.conf)])
        wait_until(lambda: self.run(["scontrol", "ping"], check=False).stdout.count("UP") > 0, 30,
                   "slurmctld to answer `scontrol ping`" + self._log_hint("slurmctld"))
        self._spawn("slurmd", [self.binaries["slurmd"], "-D", "-f", str(self.conf), "-N", self.node])
        wait_until(self._node_idle, 60, f"node {self.node} to be idle" + self._log_hint("slurmd"))

    def _log_hint(self, name: str) -> str:
        return f" (see {self.base / 'log' / (name + '.log')})"

    def _spawn(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.base / "log" / f"{name}.out", "ab")  # the daemon keeps its own copy open
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kwargs)
        log.close()
        self.daemons[name] = proc
        time.sleep(0.2)
        if proc.poll() is not None:
            out = (self.base / "log" / f"{name}.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited at once with {proc.returncode}:\n{out}")
        return proc

    def _start_munge(self) -> None:
        key = self.base / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        os.chmod(self.base / "munge", 0o755)  # munged refuses a socket folder writable by others
        self._spawn("munged", [
            self.binaries["munged"], "-F", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={self.base / 'munge' / 'munged.pid'}", f"--log-file={self.base / 'log' / 'munged.log'}",
            f"--seed-file={self.base / 'munge' / 'munged.seed'}",
        ])
        wait_until(self.munge_socket.exists, 15, "munged's socket" + self._log_hint("munged"))

    def _start_mariadb(self) -> None:
        data, sock = self.base / "db" / "data", self.base / "db" / "mysqld.sock"
        self.db_socket = sock
        init = subprocess.run(
            [self.binaries["mariadb-install-db"], "--no-defaults", f"--datadir={data}",
             f"--user={self.user}", "--auth-root-authentication-method=normal", "--skip-test-db"],
            env=self.env, capture_output=True, text=True, timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}")
        self._spawn("mariadbd", [
            self.binaries["mariadbd"], "--no-defaults", f"--datadir={data}", f"--socket={sock}",
            f"--port={self.ports['mariadb']}", "--bind-address=127.0.0.1", f"--user={self.user}",
            f"--pid-file={self.base / 'db' / 'mariadbd.pid'}", f"--log-error={self.base / 'log' / 'mariadbd.log'}",
            "--skip-log-bin", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
        ])
        wait_until(sock.exists, 60, "mariadbd's socket" + self._log_hint("mariadbd"))

    def _start_slurmdbd(self) -> None:
        dbd = self.base / "etc" / "slurmdbd.conf"
        dbd.write_text("\n".join([
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "DbdHost=localhost",
            "DbdAddr=127.0.0.1",
            f"DbdPort={self.ports['slurmdbd']}",
            f"SlurmUser={self.user}",
            f"PidFile={self.base / 'ctld' / 'slurmdbd.pid'}",
            f"LogFile={self.base / 'log' / 'slurmdbd.log'}",
            "DebugLevel=info",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={self.ports['mariadb']}",
            "StorageUser=root",
            "StorageLoc=slurm_acct_db",
            "",
        ]))
        os.chmod(dbd, 0o600)  # slurmdbd refuses a readable config
        self._spawn("slurmdbd", [self.binaries["slurmdbd"], "-D"])
        wait_until(lambda: self._port_open(self.ports["slurmdbd"]), 60, "slurmdbd" + self._log_hint("slurmdbd"))

    @staticmethod
    def _port_open(port: int) -> bool:
        with contextlib.closing(socket.socket()) as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _write_slurm_conf(self) -> None:
        mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 * 8 // 10
        cpus = os.cpu_count() or 1
        b = self.base
        lines = [
            "ClusterName=czs",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={self.ports['slurmctld']}",
            f"SlurmdPort={self.ports['slurmd']}",
            f"SlurmUser={self.user}",
            f"SlurmdUser={self.user}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={b / 'ctld'}",
            f"SlurmdSpoolDir={b / 'spool'}",
            f"SlurmctldPidFile={b / 'ctld' / 'slurmctld.pid'}",
            f"SlurmdPidFile={b / 'spool' / 'slurmd.pid'}",
            f"SlurmctldLogFile={b / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={b / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",  # no cgroups in a container
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "MinJobAge=3600",  # finished jobs stay visible to `scontrol show job`
            "KillWait=10",
            "InactiveLimit=0",
            "SlurmdTimeout=300",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
        ]
        if self.accounting:
            lines += [
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=localhost",
                f"AccountingStoragePort={self.ports['slurmdbd']}",
                f"AccountingStoragePass={self.munge_socket}",  # the munge socket slurmctld talks to slurmdbd with
            ]
        else:
            lines.append("AccountingStorageType=accounting_storage/none")
        self.conf.write_text("\n".join(lines) + "\n")

    def _node_idle(self) -> bool:
        out = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.split()
        return bool(out) and all(s.rstrip("*") == "idle" for s in out)

    # ------------------------------------------------------------------ clients
    def run(self, argv: list[str], check: bool = True, env: dict[str, str] | None = None,
            timeout: float = CLIENT_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
        """Run a client command with the cluster's environment (plus `env`)."""
        result = subprocess.run(argv, env={**self.env, **(env or {})}, capture_output=True, text=True,
                                timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def submit(self, script: str | Path, *args: str, env: dict[str, str] | None = None,
               sbatch_args: tuple[str, ...] | list[str] = (), cwd: str | Path | None = None) -> str:
        """`sbatch [sbatch_args] script args...` -> job id. The job inherits `env` over the cluster's env."""
        out = self.run(["sbatch", "--parsable", *sbatch_args, str(script), *args], env=env, cwd=cwd).stdout
        return out.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (empty when SLURM no longer knows the job)."""
        out = self.run(["scontrol", "show", "job", "-o", job_id], check=False).stdout.strip()
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def state(self, job_id: str) -> str:
        return self.job(job_id).get("JobState", "")

    def wait(self, job_id: str, timeout: float, states: set[str] | frozenset[str] = frozenset(FINAL_STATES)) -> str:
        """Wait until the job is in one of `states` (default: any final state); return that state."""
        def reached():
            state = self.state(job_id)
            return state if state in states else ""
        try:
            return wait_until(reached, timeout, f"job {job_id} to reach {sorted(states)}", period=0.5)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; it is {self.state(job_id) or 'unknown'}") from None

    def signal(self, job_id: str, sig: str, *flags: str) -> None:
        """`scancel --signal=SIG [flags] job` (flags: --batch, --full)."""
        self.run(["scancel", f"--signal={sig}", *flags, job_id])

    def requeue(self, job_id: str) -> None:
        self.run(["scontrol", "requeue", job_id])

    def start_now(self, job_id: str) -> None:
        """A requeued job waits ~120 s (BeginTime); start it now."""
        self.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])

    def start_requeued(self, job_id: str, timeout: float) -> None:
        """Wait until the job has been requeued (PENDING, Restarts >= 1) and the node has finished
        cleaning up its previous run, then start it without the ~120 s BeginTime wait. Starting it
        while the old steps still end fails the job ("Job credential revoked"): that cleanup is
        what the wait is for."""
        def requeued():
            info = self.job(job_id)
            state = info.get("JobState", "")
            if state in FINAL_STATES:
                raise AssertionError(f"job {job_id} ended ({state}) instead of being requeued")
            return int(info.get("Restarts", "0")) >= 1 and state == "PENDING" and self._node_idle()
        wait_until(requeued, timeout, f"job {job_id} to be requeued and its node idle", period=0.5)
        time.sleep(2)  # slurmd's credential revocation has 1 s resolution
        self.start_now(job_id)

    def logs(self, chars: int = 3000) -> str:
        """The tails of the daemon logs, for failure messages."""
        parts = []
        for log in sorted((self.base / "log").glob("*")):
            if log.suffix == ".out" and log.with_suffix(".log").exists():
                continue  # the daemon's own log file says the same
            text = log.read_text(errors="replace")
            if text.strip():
                parts.append(f"--- {log.name}\n{text[-chars:]}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ stop
    def _job_processes(self) -> list[int]:
        """Processes of this cluster's jobs: they inherit our SLURM_CONF and have a SLURM_JOB_ID (daemons don't)."""
        needle = f"SLURM_CONF={self.conf}\0".encode()
        daemons = {p.pid for p in self.daemons.values()}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in daemons or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                if needle in environ and b"\0SLURM_JOB_ID=" in environ:
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def stop(self) -> None:
        """Cancel every job, stop every daemon this cluster started (TERM, then KILL)."""
        ctld = self.daemons.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            with contextlib.suppress(Exception):
                jobs = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=10).stdout.split()
                if jobs:
                    self.run(["scancel", *jobs], check=False, timeout=10)
                    wait_until(lambda: not self.run(["squeue", "-h", "-o", "%i"], check=False,
                                                    timeout=10).stdout.split(), 20, "jobs to end")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._job_processes() if getattr(self, "conf", None) else []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            if pids and sig == signal.SIGTERM:
                time.sleep(2)
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            proc = self.daemons.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _needs_accounting(session: pytest.Session) -> bool:
    return any("slurm_accounting" in getattr(item, "fixturenames", ()) for item in session.items)


@pytest.fixture(scope="session")
def slurm(request: pytest.FixtureRequest) -> Iterator[SlurmCluster]:
    """A running one-node cluster; with slurmdbd + mariadb only if a collected test uses `slurm_accounting`."""
    base = Path(tempfile.mkdtemp(prefix="czs-", dir="/tmp"))
    cluster = SlurmCluster(base=base, accounting=_needs_accounting(request.session))
    atexit.register(cluster.stop)  # even if pytest dies between start and teardown
    try:
        try:
            cluster.start()
        except Exception as e:
            pytest.fail(f"could not start the SLURM test cluster: {e}\n{cluster.logs() if base.exists() else ''}",
                        pytrace=False)
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)
        if os.environ.get("CZS_KEEP"):
            print(f"\nSLURM test cluster folder kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_accounting(slurm: SlurmCluster) -> SlurmCluster:
    """The cluster with accounting (slurmdbd + mariadb), which submitit needs to see a job's final state."""
    assert slurm.accounting, "the slurm fixture was started without accounting"
    return slurm
