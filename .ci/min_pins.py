"""Print the core dependencies of pyproject.toml pinned to their declared minimums
(``numpy>=1.26`` -> ``numpy==1.26``), one per line, for the minimum-versions job of .ci/run."""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
for dep in project["dependencies"]:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", dep.split(";")[0])
    if not m:
        sys.exit(f"core dependency {dep!r} has no '>=' minimum; declare one so CI can test it")
    print(f"{m.group(1)}=={m.group(2)}")
