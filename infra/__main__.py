"""`pulumi up` runs this (Pulumi.yaml: `main: infra/`); the program is infra/program.py."""

import sys
from pathlib import Path

if not __package__:  # run as a directory program: make the repository root importable
    _root = str(Path(__file__).resolve().parents[1])
    if _root not in sys.path:
        sys.path.insert(0, _root)

from infra.program import main  # noqa: E402

main()
