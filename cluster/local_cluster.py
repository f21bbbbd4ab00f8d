"""A private, throwaway Ray cluster on this machine: ``RayHead`` runs ``ray start --head
--block`` on free ports with token auth and stops only the processes it started (never
``ray stop``, which would stop every Ray on the machine). ``RayWorker`` joins it as another
node (a separate raylet with custom resources of its own), which a test can kill alone:
several nodes on one machine stand in for a multi-node cluster.

It backs whatever needs a real head to ``serve deploy`` to (the system tests and
``benchmarks/bench_serve.py``) without touching a Ray someone else runs here.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RAY_SIGTERM_WAIT_S = 45


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_without_newsdesk() -> dict[str, str]:
    """The process environment minus NEWSDESK_* (a subprocess gets explicit settings)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NEWSDESK_")}


class RayHead:
    """A private Ray head: ``start()`` it, ``serve(...)`` against its dashboard with its token,
    ``stop()`` it (its own process group only)."""

    def __init__(
        self,
        *,
        num_cpus: int = 2,
        env: dict[str, str] | None = None,
        gcs_port: int | None = None,
        dashboard_port: int | None = None,
    ) -> None:
        self.bin = Path(sys.executable).parent
        # short: Ray puts unix sockets under it (path length limit ~107)
        self.dir = Path(tempfile.mkdtemp(prefix="ndray-", dir="/tmp"))
        self.gcs_port = gcs_port or free_port()
        self.dashboard_port = dashboard_port or free_port()
        self.num_cpus = num_cpus
        self.token = secrets.token_hex(16)
        self.env = {
            **env_without_newsdesk(),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            # SIGTERM stops at once (no 30 s node drain: nothing routes here afterwards)
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def address(self) -> str:
        """The GCS address worker nodes join (``ray start --address``)."""
        return f"127.0.0.1:{self.gcs_port}"

    def start(self, timeout_s: float = 180) -> RayHead:
        log = (self.dir / "ray-start.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(self.bin / "ray"),
                "start",
                "--head",
                "--block",
                "--port",
                str(self.gcs_port),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--ray-client-server-port",
                str(free_port()),
                "--dashboard-agent-listen-port",
                str(free_port()),
                "--min-worker-port",
                "0",
                "--max-worker-port",
                "0",
                "--num-cpus",
                str(self.num_cpus),
                "--temp-dir",
                str(self.dir / "t"),
                "--disable-usage-stats",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals only this cluster
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.dir / 'ray-start.log').read_text()}")
            try:
                r = httpx.get(
                    f"{self.dashboard_url}/api/version",
                    timeout=2,
                    headers={"Authorization": f"Bearer {self.token}"},
                )
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("the Ray head's dashboard did not come up")
            time.sleep(1)

    def serve(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        """`serve <args> -a <dashboard>` with the cluster's token."""
        done = subprocess.run(
            [str(self.bin / "serve"), *args, "-a", self.dashboard_url],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            raise RuntimeError(f"serve {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        return done

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # the session leader: its pid is the group id
        if self.proc.poll() is not None:  # it died under us: say why, in the caller's output
            log = self.dir / "ray-start.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            print(f"ray start had exited with {self.proc.returncode}:\n{tail}")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: Ray drains, then stops its children
            try:
                self.proc.wait(timeout=RAY_SIGTERM_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # whatever of this cluster is left
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
        haproxy = self.env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "")
        # made by serving.deployments.builder.fast_path_env for us
        if haproxy.startswith("/tmp/ndhp-"):
            shutil.rmtree(haproxy, ignore_errors=True)


class RayWorker:
    """A worker node of a :class:`RayHead`'s cluster: ``ray start --address ... --block`` with
    its own custom resources, in a process group of its own. ``kill_raylet()`` is a node
    failure (its raylet gone without a goodbye; the workers on it die with it)."""

    def __init__(
        self,
        head: RayHead,
        *,
        resources: dict[str, float],
        num_cpus: int = 1,
        agent_port: int | None = None,
    ) -> None:
        self.head = head
        self.resources = resources
        self.num_cpus = num_cpus
        # one machine, several nodes: the agent's HTTP port (default 52365) must differ
        self.agent_port = agent_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = head.dir / f"worker-{self.agent_port}.log"

    def start(self) -> RayWorker:
        import json

        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(self.head.bin / "ray"),
                "start",
                "--address",
                self.head.address,
                "--block",
                "--num-cpus",
                str(self.num_cpus),
                "--resources",
                json.dumps(self.resources),
                "--dashboard-agent-listen-port",
                str(self.agent_port),
                # one host: a temp dir of its own, or every raylet would bind the same unix
                # sockets in the head's session dir
                "--temp-dir",
                str(self.head.dir / f"w{self.agent_port}"),
                "--min-worker-port",
                "0",
                "--max-worker-port",
                "0",
                "--disable-usage-stats",
            ],
            env=self.head.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def raylet_pid(self) -> int | None:
        """The pid of this node's raylet (a process of this worker's group named raylet)."""
        if self.proc is None:
            return None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() != "raylet":
                    continue
                if os.getpgid(int(entry.name)) == self.proc.pid:
                    return int(entry.name)
            except (OSError, ProcessLookupError):
                continue
        return None

    def kill_raylet(self) -> None:
        """A node failure: SIGKILL the raylet, then every process it started (the replicas'
        workers) and the rest of this node's group, as if the machine had gone."""
        pid = self.raylet_pid()
        if pid is None:
            raise RuntimeError(f"no raylet in this worker's group: {self.log_path.read_text()}")
        children = _descendants(pid)
        os.kill(pid, signal.SIGKILL)
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop(graceful=False)

    def stop(self, graceful: bool = True) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        if graceful and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=RAY_SIGTERM_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self.proc = None


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
