"""docker-compose.yml in real containers, on a real Docker engine.

Run by `make compose-test` (deploy/compose.sh test), which installs and starts
the engine if it can and builds the image first. Where no engine answers the
tests report themselves skipped with the reason deploy/compose.sh recorded; an
engine that answers without the image is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.procs import wait_until

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("PAGEHINT_IMAGE", "pagehint:local")
MIB = 1 << 20


def _run(*args: str, timeout: float = 120, check: bool = True) -> str:
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def _engine_or_skip() -> None:
    reason = ROOT / "build" / "compose" / "skip-reason"
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI here (make compose-test installs one)")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        why = reason.read_text().strip() if reason.exists() else "no Docker engine answers"
        pytest.skip(f"{why} (make compose-test starts one where it can)")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        pytest.fail(f"the engine answers but there is no image {IMAGE} (deploy/compose.sh image)")


def _compose_cmd() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


class Stack:
    """One compose project of our own name, so a user's running stack is untouched."""

    def __init__(self) -> None:
        self.project = f"phtest{os.getpid()}"
        self.base = [*_compose_cmd(), "-p", self.project, "-f", str(ROOT / "docker-compose.yml")]
        self.env = {
            **os.environ,
            "PAGEHINT_IMAGE": IMAGE,
            # Any free port on loopback: never clash with a stack already on 9100.
            "PAGEHINT_METRICS_PUBLISH": "127.0.0.1:",
        }

    def compose(self, *args: str, timeout: float = 180) -> str:
        p = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if p.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed: {p.stderr.strip()[-2000:]}")
        return p.stdout

    def containers(self, service: str | None = None) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        filters = ["--filter", label]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        return _run("docker", "ps", "-aq", *filters).split()

    def metrics(self) -> str:
        port = self.compose("port", "host", "9100").strip().rsplit(":", 1)[-1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
        return text

    def per_guest(self, name: str) -> dict[str, float]:
        pattern = rf'^pagehint_host_{name}\{{guest="([^"]+)"\}} (\S+)$'
        return {g: float(v) for g, v in re.findall(pattern, self.metrics(), re.M)}

    def total_resident(self) -> float:
        m = re.search(r"^pagehint_host_resident_total_bytes (\S+)$", self.metrics(), re.M)
        assert m, "the host's metrics have no pagehint_host_resident_total_bytes"
        return float(m.group(1))


@pytest.fixture
def stack() -> Iterator[Stack]:
    _engine_or_skip()
    s = Stack()
    try:
        yield s
    finally:
        # Leave nothing even when the test failed half-way.
        subprocess.run(
            [*s.base, "down", "-v", "--remove-orphans", "--timeout", "20"],
            capture_output=True,
            timeout=180,
            env=s.env,
        )


def test_image_runs_as_non_root_without_the_lab_extra() -> None:
    _engine_or_skip()
    assert _run("docker", "image", "inspect", IMAGE, "--format", "{{.Config.User}}").strip() in (
        "10001:10001",
        "10001",
    )
    probe = (
        "import importlib.util, os; "
        "print(os.getuid(), importlib.util.find_spec('matplotlib') is None)"
    )
    out = _run("docker", "run", "--rm", "--entrypoint", "python3", IMAGE, "-c", probe)
    assert out.split() == ["10001", "True"]
    assert _run("docker", "run", "--rm", IMAGE, "--version").startswith("pagehint ")


def test_compose_stack_end_to_end(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-build", "--scale", "guest=3")
    (host,) = stack.containers("host")

    def healthy() -> bool:
        fmt = "{{.State.Health.Status}}"
        return _run("docker", "inspect", host, "--format", fmt).strip() == "healthy"

    wait_until(healthy, 90, "the host's health check", interval=1)
    assert _run("docker", "exec", host, "id", "-u").strip() == "10001"

    # Every guest negotiated (has a session) and its reports reached the host.
    def reported(n: int) -> bool:
        got = stack.per_guest("reported_bytes_total")
        return len(got) == n and all(v > 0 for v in got.values())

    wait_until(lambda: reported(3), 120, "3 guests reporting to the host", interval=1)
    assert all(g.startswith("guest-") for g in stack.per_guest("resident_bytes"))

    # memhog takes half of each guest's 1 GiB, holds it, frees it: each guest's
    # resident memory on the host rises with its allocations and falls after its
    # frees. Judged per guest: the three guests cycle out of phase, so the total
    # need not ever fall by three guests' worth at once.
    samples: dict[str, list[float]] = {}
    fell: set[str] = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(fell) < 3:
        for g, v in stack.per_guest("resident_bytes").items():
            got = samples.setdefault(g, [])
            got.append(v)
            peak = max(got)
            if peak >= 400 * MIB and v <= peak - 200 * MIB:
                fell.add(g)
        time.sleep(0.5)
    seen = {g: [int(v / MIB) for v in got] for g, got in samples.items()}
    assert len(fell) == 3, f"a guest's resident never fell after a free (MiB): {seen}"
    assert stack.total_resident() > 0

    # Scale out to 6 and back to 2: new guests join, removed ones leave the host.
    stack.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "guest=6")
    wait_until(lambda: reported(6), 120, "6 guests reporting to the host", interval=1)
    stack.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "guest=2")
    wait_until(lambda: len(stack.per_guest("resident_bytes")) == 2, 60, "the host to drop 4 guests")
    assert len(stack.containers("guest")) == 2
    ram_files = _run(
        "docker", "exec", host, "sh", "-c", "ls /shm | grep -c '\\.ram$' || true"
    ).strip()
    assert ram_files == "2", f"RAM files of removed guests remain: {ram_files}"

    # A stopped guest prints its summary: data loss checked by the shm backend, 0.
    stack.compose("stop", "--timeout", "30", "guest")
    logs = stack.compose("logs", "--no-color", "guest")
    losses = [int(n) for n in re.findall(r"data loss\s+(\d+) pages", logs)]
    assert len(losses) == 2 and losses == [0, 0], logs[-3000:]
    assert "backend shm" in logs

    volumes = _run("docker", "volume", "ls", "-q", "--filter", f"name={stack.project}").split()
    assert volumes, "the compose project made no RAM volume"
    stack.compose("down", "-v", "--timeout", "20")
    assert stack.containers() == []
    assert _run("docker", "volume", "ls", "-q", "--filter", f"name={stack.project}").split() == []
    mounts = Path("/proc/mounts").read_text()
    assert f"{stack.project}_guest-ram" not in mounts, "the RAM tmpfs is still mounted"


def test_compose_file_accepted_by_compose_v1_for_real() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("Debian's docker-compose (Compose v1) is not installed")
    # The file's own default: without PAGEHINT_METRICS_PUBLISH (compose.sh sets it).
    env = {k: v for k, v in os.environ.items() if k != "PAGEHINT_METRICS_PUBLISH"}
    p = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "guest-ram:" in out and "image: pagehint:local" in out
    assert "127.0.0.1:9100:9100/tcp" in out  # loopback only, unless told otherwise
    # The form the scripts and tests use: any free loopback port.
    p = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "PAGEHINT_METRICS_PUBLISH": "127.0.0.1:"},
    )
    assert p.returncode == 0, p.stderr
    assert "127.0.0.1::9100/tcp" in p.stdout
