"""Reading a Dockerfile's instructions (continuations joined, comments dropped), for the tests
that check the images (tests/unit/test_lint.py) and run the primary image's Jobs here
(tests/integration/cloudsim_db.py)."""

from __future__ import annotations

import re
from pathlib import Path


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest of the line) in order."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out
