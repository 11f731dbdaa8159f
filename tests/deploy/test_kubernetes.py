"""deploy/kubernetes/: every kustomization renders, validates against the
Kubernetes API's schemas, and runs pagehint commands that pagehint accepts."""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pagehint.cli import build_parser
from pagehint.cli import guest as guest_command
from pagehint.cli import host as host_command

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
# The schemas of a current minor version (kubernetes-validate ships them).
VERSION = kubernetes_validate.latest_version()
VARIANTS = ["base", "overlays/shm", "overlays/loadtest"]
CONFIGS: dict[str, Callable[[argparse.Namespace], object]] = {
    "host": host_command.config_from_args,
    "guest": guest_command.config_from_args,
}
# What the downward API gives a pod, for checking the commands it would run.
DOWNWARD = {
    "status.hostIP": "10.0.0.7",
    "metadata.name": "pagehint-guest-7d9f8-abcde",
    "metadata.annotations['batch.kubernetes.io/job-completion-index']": "3",
}


def render(variant: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(KUBE / variant)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"kustomize {variant}: {out.stderr.strip()}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("DaemonSet", "Deployment", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def container_env(c: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in maps, f"envFrom names a ConfigMap that is not rendered: {name}"
        env.update(maps[name])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = DOWNWARD[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


@pytest.mark.parametrize("variant", VARIANTS)
def test_renders_and_validates_against_the_api_schemas(variant: str) -> None:
    docs = render(variant)
    kinds = sorted(d["kind"] for d in docs)
    assert "DaemonSet" in kinds and "Service" in kinds and "Namespace" in kinds
    for d in docs:
        # strict: a field the API does not have is an error, not ignored
        kubernetes_validate.validate(d, VERSION, strict=True)
        assert d["metadata"].get("namespace", "pagehint") == "pagehint"


def test_the_validator_refuses_a_broken_manifest() -> None:
    (ds,) = [d for d in render("base") if d["kind"] == "DaemonSet"]
    broken = copy.deepcopy(ds)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)
    missing = copy.deepcopy(ds)
    del missing["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(missing, VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_runs_a_valid_pagehint_command(variant: str) -> None:
    docs = render(variant)
    checked = 0
    for name, spec in pod_specs(docs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            image = c["image"].rsplit("/", 1)[-1].split(":")[0]
            assert image == "pagehint", f"{name}/{c['name']}: unexpected image {c['image']}"
            if "command" in c:
                # Only the shm overlay's init container replaces the entrypoint.
                assert c["command"][0] == "chown", f"{name}/{c['name']}: {c['command']}"
                continue
            env = container_env(c, docs)
            assert all(k.startswith("PAGEHINT_") for k in env), sorted(env)
            args = build_parser(env).parse_args(c["args"])
            CONFIGS[args.command](args)  # raises UsageError on a bad value
            checked += 1
    assert checked >= 2


def test_a_bad_setting_in_a_config_map_is_caught(tmp_path: Path) -> None:
    """The command check can fail: a wrong PAGEHINT_* value in the host's config."""
    docs = render("base")
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("pagehint-host"):
            d["data"]["PAGEHINT_BACKEND"] = "ram"
    (_, spec) = next((n, s) for n, s in pod_specs(docs) if n == "pagehint-host")
    env = container_env(spec["containers"][0], docs)
    args = build_parser(env).parse_args(spec["containers"][0]["args"])
    from pagehint.errors import UsageError

    with pytest.raises(UsageError, match="--backend"):
        CONFIGS["host"](args)


def test_guests_reach_their_own_nodes_host() -> None:
    docs = render("base")
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    (host,) = [s for n, s in pod_specs(docs) if n == "pagehint-host"]
    host_env = container_env(host["containers"][0], docs)
    assert host_env["PAGEHINT_LISTEN"].endswith(f":{ports['grpc']}")
    for variant in ("base", "overlays/loadtest"):
        vdocs = render(variant)
        for name, spec in pod_specs(vdocs):
            if name != "pagehint-host":
                env = container_env(spec["containers"][0], vdocs)
                assert env["PAGEHINT_HOST"] == f"{svc['metadata']['name']}:{ports['grpc']}"


def test_probes_resources_and_scrape_annotations() -> None:
    for variant in VARIANTS:
        docs = render(variant)
        for name, spec in pod_specs(docs):
            assert spec["securityContext"]["runAsNonRoot"] is True
            for c in spec["containers"]:
                res = c["resources"]
                assert res["requests"]["cpu"] and res["requests"]["memory"]
                assert res["limits"]["memory"], f"{name}: no memory limit"
            c = spec["containers"][0]
            if name == "pagehint-host":
                port = int(container_env(c, docs)["PAGEHINT_LISTEN"].rsplit(":", 1)[1])
                assert c["readinessProbe"]["grpc"]["port"] == port
                assert c["livenessProbe"]["grpc"]["port"] == port
    docs = render("base")
    for d in docs:
        if d["kind"] in ("DaemonSet", "Deployment"):
            ann = d["spec"]["template"]["metadata"]["annotations"]
            c = d["spec"]["template"]["spec"]["containers"][0]
            assert ann["prometheus.io/scrape"] == "true"
            assert ann["prometheus.io/port"] == container_env(c, docs)["PAGEHINT_METRICS_PORT"]


def test_shm_overlay_shares_one_node_folder() -> None:
    docs = render("overlays/shm")
    mounts = {}
    for name, spec in pod_specs(docs):
        (vol,) = [v for v in spec["volumes"] if v["name"] == "guest-ram"]
        c = spec["containers"][0]
        (m,) = [m for m in c["volumeMounts"] if m["name"] == "guest-ram"]
        mounts[name] = (vol["hostPath"]["path"], m["mountPath"])
    assert mounts["pagehint-host"] == mounts["pagehint-guest"]
    (host,) = [s for n, s in pod_specs(docs) if n == "pagehint-host"]
    env = container_env(host["containers"][0], docs)
    assert env["PAGEHINT_BACKEND"] == "shm"
    assert env["PAGEHINT_SHM_DIR"] == mounts["pagehint-host"][1]
    # The guests open the RAM files the host names only in their own --shm-dir.
    (guest,) = [s for n, s in pod_specs(docs) if n == "pagehint-guest"]
    guest_env = container_env(guest["containers"][0], docs)
    assert guest_env["PAGEHINT_SHM_DIR"] == env["PAGEHINT_SHM_DIR"]


def _restricted_violations(spec: dict[str, Any]) -> list[str]:
    """The Pod Security Standards' restricted profile, rule by rule, for one pod."""
    bad = []
    pod_sc = spec.get("securityContext", {})
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= {"configMap", "secret", "emptyDir", "projected", "downwardAPI"}:
            bad.append(f"volume {v['name']}: {sorted(kinds)}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            bad.append(key)
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            bad.append(f"{c['name']}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{c['name']}: allowPrivilegeEscalation not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{c['name']}: capabilities not dropped")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{c['name']}: adds {caps['add']}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            bad.append(f"{c['name']}: may run as root")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            bad.append(f"{c['name']}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{c['name']}: no seccomp profile")
        for p in c.get("ports", []):
            if "hostPort" in p:
                bad.append(f"{c['name']}: hostPort")
    return bad


@pytest.mark.parametrize("variant", ["base", "overlays/loadtest"])
def test_pods_meet_the_restricted_pod_security_standard(variant: str) -> None:
    docs = render(variant)
    (ns,) = [d for d in docs if d["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, spec in pod_specs(docs):
        assert _restricted_violations(spec) == [], name


def test_the_shm_overlay_says_why_it_is_privileged() -> None:
    docs = render("overlays/shm")
    (ns,) = [d for d in docs if d["kind"] == "Namespace"]
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == "baseline"
    (host,) = [s for n, s in pod_specs(docs) if n == "pagehint-host"]
    found = _restricted_violations(host)
    assert any("hostPath" in v for v in found) and any("CHOWN" in v for v in found)
    # Every container, the init container too, runs the image kustomize names.
    for _, spec in pod_specs(docs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["image"] == "pagehint:local"
