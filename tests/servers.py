"""Helpers for tests that run `videoapp serve` (or any local server) in a real subprocess."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """A running `videoapp serve`: its base ``url`` (with a trailing slash), ``port``, process and log file."""

    url: str
    port: int
    proc: subprocess.Popen
    log: IO[str]

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read()


@contextlib.contextmanager
def videoapp_serve(root: Path, *args: str, timeout_s: float = 120.0) -> Iterator[Served]:
    """Run ``videoapp serve --port P *args`` (cwd ``root``, log ``root/serve.log``) until the block ends.

    Waits until the page answers (any HTTP status: a login page counts), fails
    with the log's tail if the server exits or does not answer within
    ``timeout_s``; stops it with SIGINT (Ctrl-C), then kills it if needed.
    ``VIDEOAPP_AUTH`` is not passed on, so only ``args`` decide on a login.
    """
    import pytest

    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(root / "gradio"), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("VIDEOAPP_AUTH", None)
    log = open(root / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "videoapp", "serve", "--port", str(port), *map(str, args)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(root))
    served = Served(f"http://127.0.0.1:{port}/", port, proc, log)
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"videoapp serve exited with {proc.returncode}:\n{served.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(served.url, timeout=5):
                    break
            except urllib.error.HTTPError:
                break  # it answers, if only with an error status
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"videoapp serve did not answer within {timeout_s:.0f} s:\n{served.log_text()[-3000:]}")
            time.sleep(0.5)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        log.close()
