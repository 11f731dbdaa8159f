"""Regenerate the committed stubs from protos/ with the pinned grpcio-tools.

python -m scripts.protos          # write virtqueue/v1/*_pb2*.py(i)
python -m scripts.protos --check  # exit 1 if the committed stubs differ
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "virtqueue" / "v1"
FILES = ("balloon_pb2.py", "balloon_pb2.pyi", "balloon_pb2_grpc.py")


def generate(dest: Path) -> None:
    from grpc_tools import protoc  # the test extra pins grpcio-tools

    proto = PROTOS / "virtqueue" / "v1" / "balloon.proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--python_out={dest}",
        f"--pyi_out={dest}",
        f"--grpc_python_out={dest}",
        str(proto),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.protos")
    ap.add_argument("--check", action="store_true", help="fail if the committed stubs differ")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        produced = Path(tmp) / "virtqueue" / "v1"
        if a.check:
            stale = [
                f
                for f in FILES
                if not (OUT / f).exists() or not filecmp.cmp(produced / f, OUT / f, False)
            ]
            if stale:
                print(
                    f"generated stubs are stale: {', '.join(stale)}; run `make protos`",
                    file=sys.stderr,
                )
                return 1
            print("generated stubs are up to date")
            return 0
        OUT.mkdir(parents=True, exist_ok=True)
        for f in FILES:
            shutil.copyfile(produced / f, OUT / f)
        print(f"wrote {', '.join(FILES)} to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
