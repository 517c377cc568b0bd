"""`imgproc serve` as a real uvicorn process on a free loopback port (tests and the benchmark)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

LOCAL_PLUGINS = Path(__file__).parent / "local_plugins"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One `imgproc serve` process; a context manager that never leaves it running."""

    def __init__(self, data_dir: Path, *args: str, token: str = "", log: Path | None = None,
                 plugins_dir: Path | None = LOCAL_PLUGINS) -> None:
        self.data_dir = data_dir
        self.args = args
        self.token = token
        self.plugins_dir = plugins_dir
        self.log = log or data_dir.parent / f"{data_dir.name}-server.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Return the server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> ServerProcess:
        """Start the server and return once /healthz answers."""
        self.port = free_port()
        command = [sys.executable, "-m", "imgproc.cli", "--log-json"]
        if self.plugins_dir is not None:
            command += ["--plugins-dir", str(self.plugins_dir)]
        command += ["serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
                    *self.args]
        env = {k: v for k, v in os.environ.items() if k not in ("IMGPROC_CONFIG",
                                                                 "IMGPROC_TOKEN")}
        if self.token:
            env["IMGPROC_TOKEN"] = self.token  # not on the command line, where ps shows it
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=self.data_dir.parent, env=env,
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"server exited: {self.tail()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not ready: {self.tail()}"
            time.sleep(0.05)

    def client(self, *, auth: bool = True, timeout: float = 60) -> httpx.Client:
        """Return an HTTP client for this server (with the Bearer token when `auth`)."""
        headers = {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> bool:
        """SIGTERM the server; return True when it shut down cleanly (logged "stopped" and
        ended by the signal re-raised after shutdown, as uvicorn does and systemd expects)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code in (0, -signal.SIGTERM) and '"event": "stopped"' in self.tail(500)

    def tail(self, chars: int = 3000) -> str:
        """Return the end of the server's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()


def wait_for(predicate: Any, timeout: float = 60, what: str = "condition") -> Any:
    """Return predicate()'s first truthy value, polling; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
