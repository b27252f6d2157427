"""A local S3 (and SQS) endpoint: a moto server on a loopback port, for the demo and the tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalS3:
    endpoint_url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    port: int | None = None, timeout_s: float = 30.0, host: str = LOOPBACK, unchecked_requests: int | None = None
) -> LocalS3:
    """A moto server on host:port (a free loopback port by default); `host` another local address to serve.

    unchecked_requests: moto accepts any credentials by default; given a number, it checks them after that many
    requests (moto's INITIAL_NO_AUTH_ACTION_COUNT), refusing keys its IAM never issued, as S3 does.
    """
    port = port or free_port()
    env = dict(os.environ)
    if unchecked_requests is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(unchecked_requests)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint_url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {process.returncode} before answering on {endpoint_url}")
        try:
            with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=1):
                return LocalS3(endpoint_url, process)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"moto server did not answer on {endpoint_url} within {timeout_s:.0f} s")


@contextlib.contextmanager
def running(port: int | None = None) -> Iterator[LocalS3]:
    server = start(port)
    try:
        yield server
    finally:
        server.stop()
