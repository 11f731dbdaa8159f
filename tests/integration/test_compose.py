"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The same file in real containers: test_compose_docker.py (make compose-test).

Parses the file, checks its services, then runs each service's command and
health check as local processes with the compose environment: service names
resolve to loopback, the published port becomes a free local port, and the
shared volume becomes a temporary folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

from tests.integration.procs import free_port, wait_until
from virtqueue import codec

ROOT = Path(__file__).resolve().parents[2]
CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_shape() -> None:
    c = load()
    host, guest = c["services"]["host"], c["services"]["guest"]
    assert host["command"] == ["host"] and guest["command"] == ["guest"]
    assert guest["depends_on"]["host"]["condition"] == "service_healthy"
    assert host["healthcheck"]["test"][:3] == ["CMD", "pagehint", "health"]
    for svc in (host, guest):
        assert all(k.startswith("PAGEHINT_") for k in svc["environment"])
        assert any(v.endswith(":/shm") for v in svc["volumes"])
    assert host["environment"]["PAGEHINT_BACKEND"] == "shm"
    # The guests open the RAM files the host names only in their own --shm-dir.
    assert guest["environment"]["PAGEHINT_SHM_DIR"] == host["environment"]["PAGEHINT_SHM_DIR"]
    assert guest["environment"]["PAGEHINT_HOST"].startswith("host:")
    assert "{hostname}" in guest["environment"]["PAGEHINT_ID"]  # unique per replica
    assert "guest-ram" in c["volumes"]
    # Compose v1 (Debian's 1.29) refuses a top-level name.
    assert "name" not in c
    assert host["image"] == guest["image"] == "${PAGEHINT_IMAGE:-pagehint:local}"
    # The tmpfs that holds the RAM files belongs to the image's non-root user.
    docker = (ROOT / "Dockerfile").read_text()
    (uid,) = re.findall(r"^USER (\d+):\d+$", docker, re.M)
    assert int(uid) != 0
    assert f"uid={uid}" in c["volumes"]["guest-ram"]["driver_opts"]["o"]
    assert 'ENTRYPOINT ["pagehint"]' in docker


def test_dockerfile_layers() -> None:
    """Dependencies install before the source is copied, so a source edit reuses them."""
    lines = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln and ln[0] != "#"]
    stages = [i for i, ln in enumerate(lines) if ln.startswith("FROM ")]
    assert len(stages) == 2, "a build stage and a runtime stage"
    deps = next(i for i, ln in enumerate(lines) if "-r /src/requirements.txt" in ln)
    first_source = next(i for i, ln in enumerate(lines) if ln.startswith("COPY pagehint "))
    assert deps < first_source
    # The runtime stage carries the venv only: no compilers, no source, no wheels.
    runtime = lines[stages[1] :]
    assert [ln for ln in runtime if ln.startswith("COPY")] == [
        "COPY --from=build /opt/pagehint /opt/pagehint"
    ]


def test_requirements_script_lists_runtime_dependencies_only() -> None:
    script = ROOT / "deploy" / "docker" / "requirements.py"
    out = subprocess.run(
        [sys.executable, str(script), str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    names = {re.split(r"[<>=;\[ ]", ln, maxsplit=1)[0].lower() for ln in out if ln}
    assert {"grpcio", "protobuf", "prometheus-client"} <= names
    assert "matplotlib" not in names and "pytest" not in names


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    """Compose v2 reads the compose-spec; check the file against its schema."""

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(path)],
            capture_output=True,
            text=True,
        )

    ok = check(ROOT / "docker-compose.yml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = load()
    broken["services"]["host"]["healthcheck"]["retires"] = 6  # a typo compose must refuse
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(broken))
    assert check(bad).returncode != 0, "the schema check cannot fail: it checks nothing"


def test_compose_services_run_as_local_processes(tmp_path: Path) -> None:
    c = load()
    port, metrics = free_port(), free_port()
    shm = tmp_path / "shm"

    def localize(value: str) -> str:
        # compose networking -> loopback; the named volume -> a temp folder
        value = value.replace("0.0.0.0:50051", f"127.0.0.1:{port}")
        value = value.replace("host:50051", f"127.0.0.1:{port}").replace(
            "127.0.0.1:50051", f"127.0.0.1:{port}"
        )
        return str(shm) if value == "/shm" else value

    def env_of(svc: dict[str, Any], **extra: str) -> dict[str, str]:
        env = {k: localize(str(v)) for k, v in svc["environment"].items()}
        env["PAGEHINT_METRICS_PORT"] = extra.pop("metrics", env["PAGEHINT_METRICS_PORT"])
        return {**os.environ, **env, **extra}

    def cmd(args: list[str]) -> list[str]:
        return [sys.executable, "-m", "pagehint", *[localize(a) for a in args]]

    procs: list[subprocess.Popen[bytes]] = []
    try:
        host_svc = c["services"]["host"]
        host = subprocess.Popen(
            cmd(host_svc["command"]),
            env=env_of(host_svc, metrics=str(metrics)),
            stderr=subprocess.DEVNULL,
        )
        procs.append(host)
        health = cmd(host_svc["healthcheck"]["test"][2:])
        wait_until(
            lambda: subprocess.run(health, capture_output=True).returncode == 0,
            30,
            "the host's health check to pass",
        )
        guest_svc = c["services"]["guest"]
        for i in range(2):  # --scale guest=2
            g = subprocess.Popen(
                cmd(guest_svc["command"]),
                env=env_of(guest_svc, metrics=str(free_port()), PAGEHINT_ID=f"guest-replica{i}"),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            procs.append(g)
        assert (shm / "host.pid").exists()

        def both_reported() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                st = codec.decode_host_stats(
                    codec.stub(ch).Stats(codec.encode_stats_request(), timeout=5)
                )
            seen = {g.guest_id for g in st.guests if g.chains > 0 and g.measured_by_kernel}
            return seen >= {"guest-replica0", "guest-replica1"}

        wait_until(both_reported, 40, "both guests' reports to reach the host", interval=0.5)
        for g in procs[1:]:
            g.send_signal(signal.SIGTERM)  # docker compose stop
            assert g.wait(20) == 0
        host.send_signal(signal.SIGTERM)
        assert host.wait(20) == 0
        assert not list(shm.glob("*.ram"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        time.sleep(0)
