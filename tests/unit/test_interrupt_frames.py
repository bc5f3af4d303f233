"""Which frames the interrupt may be raised in (workers/core/interrupts.py): tickstack's own
code wherever it is installed, never the standard library's."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from workers.core import interrupts


def _frame_of(filename: str, module: str):
    """A real frame of code compiled as if it lived in `filename`, as module `module`."""
    code = compile("import sys\nframe = sys._getframe()\n", filename, "exec")
    scope = {"__name__": module}
    exec(code, scope)  # noqa: S102 - a frame with a chosen file name and module, nothing else
    return scope["frame"]


def test_tickstacks_code_installed_as_a_wheel_is_still_the_application():
    site = Path(sysconfig.get_paths()["purelib"])
    assert interrupts._application(_frame_of(str(site / "workers" / "db" / "x.py"), "workers.db.x"))
    # Another package in the same place is a library's code: not raised in.
    assert not interrupts._application(_frame_of(str(site / "other" / "x.py"), "other.x"))


def test_the_standard_library_and_generated_code_are_not():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert not interrupts._application(_frame_of(str(stdlib / "contextlib.py"), "contextlib"))
    assert not interrupts._application(_frame_of("<string>", "__main__"))
    assert interrupts._application(sys._getframe())  # this test's own frame
