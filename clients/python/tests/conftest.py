"""A real Faultline agent and real pods (network namespaces) for the suite.

The environment comes from the project's own testkit (`fault-testenv up`): the inference
topology (frontend-0, vllm-decode-0/1, vllm-prefill-0, nats-0 in namespace `dynamo`), an agent
serving the Fault Injection API, and echo servers in every pod (TCP 8000, TCP 4222 on NATS,
UDP 9100). Traffic is measured with `fault-testenv probe`, the same probes the Rust tests use.
Needs root; the binaries are found in $FAULTLINE_BIN_DIR (default: the workspace's
target/debug).

With $FAULTLINE_TESTENV_READY set to such a JSON file (plus `token`), the suite runs against
that environment instead of starting one: `cargo xtask test`'s node suite points it at the
in-cluster API (through its Service, with the Secret's token) and at real pods of a real node,
whose containers run the same echo servers (`fault-testenv serve`).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from fault_injection_client import FaultInjectionClient

ROOT = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("FAULTLINE_BIN_DIR", ROOT / "target" / "debug"))
TESTENV = BIN_DIR / "fault-testenv"


class Env:
    """The pods and the agent, with probes between pods."""

    def __init__(self, ready: dict):
        self.api_url: str = ready["api_url"]
        self.token = ready.get("token")
        self.pods: dict = ready["pods"]
        self.namespace = "dynamo"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        # Raw HTTP to the API (what the client does not wrap), with the token when there is one.
        self.http = httpx.Client(base_url=self.api_url, headers=headers, timeout=30)

    def _probe(self, kind: str, src: str, dst: str, port: int, family: str = "ipv4", **extra) -> dict:
        cmd = [str(TESTENV), "probe", kind, "--from", self.pods[src]["netns"], "--to", self.pods[dst][family],
               "--port", str(port), "--to-netns", self.pods[dst]["netns"]]
        for k, v in extra.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def tcp_echo(self, src: str, dst: str, port: int = 8000, timeout_ms: int = 1000) -> bool:
        """A TCP connection from `src` to `dst:port` and an echoed message."""
        return self._probe("tcp-echo", src, dst, port, timeout_ms=timeout_ms)["ok"]

    def udp_echo(self, src: str, dst: str, port: int = 9100, timeout_ms: int = 1000) -> bool:
        return self._probe("udp-echo", src, dst, port, timeout_ms=timeout_ms)["ok"]

    def udp_stream(self, src: str, dst: str, count: int = 10000, port: int = 9300) -> dict:
        """Sends `count` datagrams; returns sent, received, loss_ratio, corrupt_ratio."""
        return self._probe("udp-stream", src, dst, port, count=count)


@pytest.fixture(scope="session")
def env():
    external = os.environ.get("FAULTLINE_TESTENV_READY")
    if external:
        yield Env(json.loads(Path(external).read_text()))
        return
    if not TESTENV.exists():
        pytest.fail(f"{TESTENV} missing: build with `cargo build -p fault-agent -p faultctl -p fault-testkit`")
    with tempfile.TemporaryDirectory() as d:
        ready_file = Path(d) / "ready.json"
        proc = subprocess.Popen([str(TESTENV), "up", "--ready-file", str(ready_file)])
        try:
            deadline = time.time() + 60
            while not ready_file.exists():
                if proc.poll() is not None:
                    pytest.fail(f"fault-testenv exited with {proc.returncode}")
                if time.time() > deadline:
                    pytest.fail("fault-testenv not ready within 60 s")
                time.sleep(0.1)
            yield Env(json.loads(ready_file.read_text()))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture()
def client(env):
    """A client of the agent; every fault of the namespace is cleaned up after each test."""
    c = FaultInjectionClient(api_url=env.api_url, token=env.token)
    yield c
    c.cleanup(env.namespace)
    c.close()
