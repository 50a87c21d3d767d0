"""Print the requirements pyproject.toml declares for the given extras, one per line.

The Docker build installs these before it copies the source, so the slow dependency layer
(llama.cpp compiles from source) is rebuilt only when pyproject.toml changes, not on every
code change. An extra that pyproject.toml does not define is skipped (pip only warns about
it too); a self-reference such as ``guarita[local]`` inside an extra is expanded.

Usage: python pyproject_requirements.py EXTRAS [PYPROJECT]   (EXTRAS like "local,scale")
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?")


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    own_name = project["name"].lower()
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    found: list[str] = []
    expanded: set[str] = set()

    def add(reqs: list[str]) -> None:
        for req in reqs:
            match = _NAME.match(req)
            if match and match.group(1).lower() == own_name:
                add_extras((match.group(2) or "").split(","))
            elif req not in found:
                found.append(req)

    def add_extras(names: list[str]) -> None:
        for extra in (n.strip() for n in names):
            if extra and extra not in expanded:
                expanded.add(extra)
                add(optional.get(extra, []))

    add(project.get("dependencies", []))
    add_extras(extras)
    return found


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    pyproject = Path(argv[1] if len(argv) == 2 else "pyproject.toml")
    for req in requirements(pyproject, argv[0].split(",")):
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
