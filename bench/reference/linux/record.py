"""Record the real kernel's free page reporting: a Linux 6.1 guest under QEMU.

The figures pagehint's reporting policy is held to (tests/integration/
test_kernel_fidelity.py) come from here, not from memory: a 2 GiB, 2-vCPU guest
booting Debian 12's own kernel (linux-image-amd64, 6.1) with a
``virtio-balloon-pci,free-page-reporting=on`` device, running ``workload.c``
(touch a region, hold it, unmap it, idle), while this script samples QEMU's
resident memory every 10 ms. QEMU discards each reported range with
MADV_DONTNEED at once, so the drops of its RSS are the kernel's reports.
The recording also keeps each CPU's per-CPU list count in each zone just before
and after the free (``pcp_counts``, from /proc/zoneinfo): what a long free
leaves on the list depends on the count it began with.

Needs (Debian 12): qemu-system-x86 linux-image-amd64 busybox-static gcc cpio.
Run as root, on an idle machine:

    python -m bench.reference.linux.record --mode thp --out bench/reference/linux/thp.json
    python -m bench.reference.linux.record --mode small --order 0 --out .../order0-1.json

TCG by default (--accel kvm where nested KVM runs): a slower guest CPU, the same
kernel rules and the same wall-clock timers (the 2 s reporting delay).
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = [
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
    "virtio_pci", "virtio_balloon",
]  # fmt: skip
SAMPLE_S = 0.01


def kernel() -> tuple[str, str]:
    images = sorted(glob.glob("/boot/vmlinuz-*"))
    if not images:
        sys.exit("record: no /boot/vmlinuz-*: apt-get install linux-image-amd64")
    image = images[-1]
    return image, image.removeprefix("/boot/vmlinuz-")


def initramfs(release: str, work: Path) -> Path:
    root = work / "root"
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    for d in ("proc", "sys", "dev"):
        (root / d).mkdir()
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    shutil.copy(HERE / "init.sh", root / "init")
    subprocess.run(
        ["gcc", "-O2", "-static", "-o", str(root / "workload"), str(HERE / "workload.c")],
        check=True,
    )
    for m in MODULES:
        found = glob.glob(f"/lib/modules/{release}/kernel/drivers/virtio/{m}.ko*")
        if not found:
            sys.exit(f"record: module {m} not found for {release}")
        shutil.copy(found[0], root / "lib" / f"{m}.ko")
    out = work / "initrd.cpio"
    files = subprocess.run(
        ["find", "."], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    with out.open("wb") as f:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files.encode(),
            stdout=f, check=True,
        )  # fmt: skip
    return out


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def resident_runs(pid: int, ram_bytes: int) -> list[list[int]]:
    """The guest-physical pages QEMU holds now, as [start, end) pfn runs: its RAM
    mapping's entries in /proc/PID/pagemap (bit 63: present)."""
    maps = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if hi - lo == ram_bytes:
                maps.append(lo)
    if len(maps) != 1:
        sys.exit(f"record: {len(maps)} mappings of the guest's RAM size in qemu; expected 1")
    n = ram_bytes >> 12
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek((maps[0] >> 12) * 8)
        entries = struct.unpack(f"{n}Q", f.read(n * 8))
    runs: list[list[int]] = []
    for pfn, entry in enumerate(entries):
        if entry >> 63:
            if runs and runs[-1][1] == pfn:
                runs[-1][1] = pfn + 1
            else:
                runs.append([pfn, pfn + 1])
    return runs


def run(
    mode: str,
    region_mib: int,
    order: int | None,
    ram_mib: int,
    cpus: int,
    accel: str,
    boot_map: bool = False,
    trace_reports: bool = False,
    trace_drains: bool = False,
) -> dict:
    image, release = kernel()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        initrd = initramfs(release, work)
        serial = work / "serial.log"
        append = f"console=ttyS0 quiet pagehint.mode={mode} pagehint.region={region_mib}"
        if order is not None:
            # init.sh writes it after the driver registered (6.1 resets it there).
            append += f" pagehint.order={order}"
        if boot_map:
            append += " pagehint.bootmap=1"
        if trace_reports:
            append += " pagehint.trace=1"
        if trace_drains:
            append += " pagehint.tracedrains=1"
        kvm = accel == "kvm"
        cmd = [
            "qemu-system-x86_64", "-accel", "kvm" if kvm else "tcg",
            # -cpu max fails under nested KVM here (MSR 0x10a): host less that MSR
            "-cpu", "host,-arch-capabilities" if kvm else "max",
            "-m", str(ram_mib), "-smp", str(cpus), "-kernel", image, "-initrd", str(initrd),
            "-append", append, "-display", "none", "-serial", f"file:{serial}",
            "-device", "virtio-balloon-pci,free-page-reporting=on", "-no-reboot",
        ]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples: list[tuple[float, int]] = []
        marks: dict[str, float] = {}
        resident: list[list[int]] | None = None
        seen = 0
        while proc.poll() is None:
            t = time.monotonic() - t0
            try:
                samples.append((round(t, 4), rss_bytes(proc.pid)))
            except OSError:
                break
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if len(text) > seen:
                for line in text[seen:].splitlines():
                    if line.startswith("PAGEHINT-MARK "):
                        marks.setdefault(line.split()[1], t)
                        if boot_map and line.split()[1] == "registered" and resident is None:
                            resident = resident_runs(proc.pid, ram_mib << 20)
                seen = len(text)
            if time.monotonic() - t0 > 600:
                proc.kill()
                sys.exit("record: the guest ran for 10 minutes; killed")
            time.sleep(SAMPLE_S)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.wait() != 0:
            sys.exit(f"record: qemu exited {proc.returncode}: {err.strip()[:300]}")
        text = serial.read_text(errors="replace")
    proc_text = sections(text)
    # Per-CPU list counts, zone by zone and CPU by CPU, just before and after the
    # free (workload.c): the count the free began with decides what stays listed.
    pcp = {
        when: [int(x) for x in counts]
        for _, when, *counts in (
            line.split() for line in text.splitlines() if line.startswith("PAGEHINT-PCP ")
        )
    }
    if "PAGEHINT-ERROR" in text:
        sys.exit("record: the guest said " + text[text.index("PAGEHINT-ERROR") :].splitlines()[0])
    out = {
        "kernel": release,
        "qemu": subprocess.run(
            ["qemu-system-x86_64", "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        "accel": "kvm" if kvm else "tcg",
        "ram_mib": ram_mib,
        "cpus": cpus,
        "mode": mode,
        "region_mib": region_mib,
        # What the kernel ran with (sysfs, read after registration), not what was asked.
        "reporting_order": int(proc_text["reporting_order"].strip()),
        "requested_order": order,
        "recorded": time.strftime("%Y-%m-%d"),
        "marks": marks,
        "samples": samples,
        "proc": proc_text,
        "pcp_counts": pcp,
    }
    if trace_reports:
        out["reports"] = traced_reports(proc_text.get("trace", ""))
    if trace_drains:
        out["free_trace"] = traced_free(text)
    if boot_map:
        # At registration, before any pass: the guest's page states and what the
        # host holds. Free pages the host holds are memory the boot wrote and freed.
        out["boot_map"] = {
            "kpageflags": [
                [k, int(a, 16), int(b, 16)]
                for k, a, b in (
                    line.split()[1:] for line in text.splitlines()
                    if line.startswith("PAGEHINT-KPF ")
                )
            ],
            "resident": resident,
        }  # fmt: skip
    return out


def traced_reports(trace: str) -> list[dict[str, object]]:
    """Each report the kernel made: its time (the guest's clock, seconds) and the
    orders of the pages it carried, in the order they were isolated."""
    reports: list[dict[str, object]] = []
    orders: list[int] = []
    for line in trace.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        if parts[1] == "iso:":
            orders.append(int(parts[-1].split("=")[1], 0))
        elif parts[1] == "rep:":
            reports.append({"t": float(parts[0].rstrip(":")), "orders": orders})
            orders = []
    return reports


def traced_free(text: str) -> dict[str, object]:
    """The munmap, traced: each per-CPU drain's size in order, and the pages freed
    and allocated while it ran."""
    out: dict[str, object] = {}
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["PAGEHINT-DRAINS"]:
            out["drains"] = [int(x) for x in parts[1:]]
        elif parts[:1] == ["PAGEHINT-FREEOPS"]:
            out["frees"], out["allocs"] = int(parts[1]), int(parts[2])
    return out


def sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    name = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("PAGEHINT-BEGIN "):
            name, lines = line.split()[1], []
        elif line.startswith("PAGEHINT-END ") and name:
            out[name] = "\n".join(lines)
            name = None
        elif name:
            lines.append(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["thp", "small"], default="thp")
    ap.add_argument("--region", type=int, default=256, help="MiB touched and freed")
    ap.add_argument("--order", type=int, default=None, help="page_reporting_order")
    ap.add_argument("--ram", type=int, default=2048, help="guest MiB")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument(
        "--accel", choices=["kvm", "tcg"], default="tcg",
        help="tcg by default: on this project's machine /dev/kvm opens but a guest never runs",
    )  # fmt: skip
    ap.add_argument(
        "--boot-map", action="store_true",
        help="also record, at registration, the guest's /proc/kpageflags and QEMU's page map",
    )  # fmt: skip
    ap.add_argument(
        "--trace-reports", action="store_true",
        help="also record each report's pages by order (kprobes inside the guest)",
    )  # fmt: skip
    ap.add_argument(
        "--trace-drains", action="store_true",
        help="also record the free's per-CPU drains, frees and allocations (ftrace in the guest)",
    )  # fmt: skip
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rec = run(
        a.mode, a.region, a.order, a.ram, a.cpus, a.accel, a.boot_map, a.trace_reports,
        a.trace_drains,
    )  # fmt: skip
    Path(a.out).write_text(json.dumps(rec) + "\n")
    print(f"record: {len(rec['samples'])} samples, marks {rec['marks']} -> {a.out}")


if __name__ == "__main__":
    main()
