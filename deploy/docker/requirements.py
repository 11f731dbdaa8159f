"""Print the project's runtime dependencies from pyproject.toml, one per line.

The image installs these in a layer of their own, before the source is copied,
so a change to the source does not reinstall them; the offline build
(deploy/compose.sh) uses the same list to fill its wheel folder.
Extras (e.g. `lab`) are named on the command line: `requirements.py pyproject.toml lab`.
"""

from __future__ import annotations

import sys
import tomllib


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: requirements.py PYPROJECT [EXTRA ...]\n")
        return 2
    with open(argv[0], "rb") as f:
        project = tomllib.load(f)["project"]
    deps = list(project.get("dependencies", []))
    for extra in argv[1:]:
        deps += project.get("optional-dependencies", {}).get(extra, [])
    sys.stdout.write("".join(d + "\n" for d in deps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
