"""deploy/compose.sh says what it will change on the machine before it does, and can be
skipped. Run on a copy of the script, with stand-ins for apt-get, docker and dockerd
on a PATH of their own: nothing is installed or started."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("bash", "cat", "sed", "mkdir", "seq", "tail", "dirname", "tr", "sleep", "rm", "setsid")
APT = "apt-get update; apt-get install -y"
DOCKERD = "dockerd --storage-driver=vfs --iptables=false --bridge=none"
SKIP_HOW = "make test SKIP_DOCKER=1"


def _fake(bin_dir: Path, name: str, body: str) -> None:
    f = bin_dir / name
    f.write_text(f"#!/bin/bash\n{body}\n")
    f.chmod(0o755)


def _machine(tmp_path: Path, *, uid: int = 0, installed: bool = False) -> Path:
    """A copy of the project's script and a PATH with only what is named here.
    Every stand-in records its call in `calls`, and fails."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(ROOT / "deploy" / "compose.sh", tmp_path / "deploy" / "compose.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        path = shutil.which(tool)
        assert path, tool
        (bin_dir / tool).symlink_to(path)
    _fake(bin_dir, "id", f'[[ "$1" == -u ]] && echo {uid} || echo "uid={uid}"')
    record = f'echo "${{0##*/}} $*" >> {tmp_path}/calls; exit 1'
    _fake(bin_dir, "apt-get", record)
    if installed:  # the packages are there, but no engine answers
        for name in ("docker", "dockerd", "debootstrap", "docker-compose"):
            _fake(bin_dir, name, record)
    return tmp_path


def _run(machine: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(machine / "deploy" / "compose.sh"), *args],
        env={"PATH": str(machine / "bin"), "PAGEHINT_DOCKER_NOTICE_WAIT": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _calls(machine: Path) -> list[str]:
    f = machine / "calls"
    return f.read_text().splitlines() if f.exists() else []


def test_plan_tells_what_would_be_installed_and_started_and_how_to_skip(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    r = _run(m, "plan")
    assert r.returncode == 0, r.stderr
    assert "nothing is done now" in r.stderr
    assert (
        f"install Debian packages with apt-get ({APT}): docker.io debootstrap docker-compose"
        in (r.stderr)
    )
    assert f"start {DOCKERD}" in r.stderr and "stop it when the step ends" in r.stderr
    assert SKIP_HOW in r.stderr and "PAGEHINT_SKIP_DOCKER=1" in r.stderr
    assert _calls(m) == []  # neither apt-get nor anything else ran
    # `engine` alone leaves its daemon running, and says so.
    r = _run(m, "plan", "engine")
    assert "it keeps running" in r.stderr and "stop-engine" in r.stderr


def test_plan_as_a_user_changes_nothing(tmp_path: Path) -> None:
    r = _run(_machine(tmp_path, uid=1000), "plan")
    assert r.returncode == 0
    assert "not root, so nothing is installed or started" in r.stderr
    assert "apt-get install" not in r.stderr


def test_skip_says_skipped_and_exits_0_without_touching_anything(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    for value in ("1", "true", "YES"):
        for step in ("test", "demo", "engine"):
            r = _run(m, step, PAGEHINT_SKIP_DOCKER=value)
            assert r.returncode == 0, r.stderr
            assert f"{step}: skipped (PAGEHINT_SKIP_DOCKER={value})" in r.stderr
    r = _run(m, "plan", PAGEHINT_SKIP_DOCKER="1")
    assert r.returncode == 0 and "skipped" in r.stderr and "apt-get" not in r.stderr
    assert _calls(m) == []
    assert not (m / "build" / "compose" / "skip-reason").exists()
    # A value that is neither: one line, not a guess.
    r = _run(m, "test", PAGEHINT_SKIP_DOCKER="maybe")
    assert r.returncode == 2 and "say 1 to skip" in r.stderr


def test_ci_still_runs_the_step(tmp_path: Path) -> None:
    # CI sets no skip: the plan is to install and start, and the step goes ahead.
    m = _machine(tmp_path)
    r = _run(m, "plan", CI="true")
    assert "install Debian packages" in r.stderr and "skipped" not in r.stderr
    r = _run(m, "engine", CI="true", PAGEHINT_SKIP_DOCKER="0")
    assert _calls(m) == ["apt-get update -qq"]  # it went ahead (the stand-in fails)


def test_the_notice_comes_before_apt_get(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    r = _run(m, "engine")
    # The stand-in apt-get fails, so the step ends there, with its reason recorded.
    assert r.returncode == 1
    assert _calls(m) == ["apt-get update -qq"]
    notice = r.stderr.index("this will change the system")
    assert notice < r.stderr.index("installing docker.io debootstrap docker-compose")
    assert SKIP_HOW in r.stderr[notice:]
    assert "apt-get install" in (m / "build" / "compose" / "skip-reason").read_text()


def test_the_notice_comes_before_dockerd(tmp_path: Path) -> None:
    # Everything installed, no engine answering: only the daemon is started.
    m = _machine(tmp_path, installed=True)
    r = _run(m, "engine")
    assert r.returncode == 1  # the stand-in dockerd exits at once
    assert "install Debian packages" not in r.stderr
    notice = r.stderr.index(f"start {DOCKERD}")
    assert notice < r.stderr.index(f"starting {DOCKERD}")
    assert SKIP_HOW in r.stderr
    assert DOCKERD in _calls(m)


def test_make_passes_skip_docker_to_the_compose_step() -> None:
    r = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "compose-test", "SKIP_DOCKER=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "PAGEHINT_SKIP_DOCKER=1" in r.stdout and "deploy/compose.sh test" in r.stdout
