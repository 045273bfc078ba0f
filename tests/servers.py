"""Starting the real server (and other real processes) for tests."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class ServerProcess:
    """`python -m realtime_llm serve` in a subprocess, on a free port of its own."""

    def __init__(self, config_path: Path, workdir: Path, env: dict[str, str] | None = None,
                 port: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.config_path = config_path
        self.args = args
        self.workdir = workdir
        self.port = port or free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET")}
        self.env.update(env or {})
        self.log_path = workdir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "realtime_llm", "serve", "--config", str(self.config_path),
             "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


REPO = Path(__file__).resolve().parent.parent
CADDY_HELP = "caddy is not installed: apt-get install caddy (.ci/run installs it when missing)"


class Caddy:
    """`caddy run` on the repo's Caddyfile, configured through its environment variables."""

    def __init__(self, workdir: Path, upstreams: list[str]) -> None:
        binary = shutil.which("caddy")
        if binary is None:
            raise RuntimeError(CADDY_HELP)
        self.port = free_port()
        env = {
            **os.environ,
            "SITE_ADDRESS": f"http://127.0.0.1:{self.port}",
            "APP_UPSTREAMS": " ".join(upstreams),
            "STATIC_ROOT": str(REPO / "static"),
            "CADDY_ADMIN": f"127.0.0.1:{free_port()}",
            "HOME": str(workdir), "XDG_DATA_HOME": str(workdir / "data"), "XDG_CONFIG_HOME": str(workdir / "config"),
        }
        self.log_path = workdir / "caddy.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [binary, "run", "--config", str(REPO / "Caddyfile"), "--adapter", "caddyfile"],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"caddy exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"caddy did not start:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.process)


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not ended within 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def worker_pids(parent: int) -> list[int]:
    """The worker processes of a `serve --workers N` parent (not multiprocessing's helper)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def established_connections(pid: int, port: int, states: tuple[str, ...] = ("01",)) -> int:
    """How many TCP connections to `port` the process holds (from /proc): established
    ones, or in any of `states` (kernel hex codes: 01 established, 08 close-wait, ...)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] in states and fields[9] in inodes:
                count += 1
    return count
