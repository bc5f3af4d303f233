"""One exception hierarchy for every worker, and its one mapping to exit codes.

DESIGN.md's contract: exit 0 done; 1 failed (the message says what and where); 2 bad usage or
bad input. Workers raise these (or let psycopg / botocore errors through); the faces (the CLI
and `workers up`) turn any of them into one line and a code with `describe` — never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class TickstackError(Exception):
    """A worker could not do what was asked; the message says what, `where` (a server, a
    file) may say where."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, where: str | None = None):
        super().__init__(message)
        self.where = where


class Failed(TickstackError):
    """The work could not complete (a server, a tool, the data in landing): exit 1."""


class BadInput(TickstackError, ValueError):
    """The request or its input is wrong (a file, an option, a job row): exit 2."""

    exit_code = EXIT_USAGE


class Refused(BadInput):
    """A safe default stopped the command (e.g. overwriting a healthy primary): exit 2."""


def describe(e: BaseException) -> tuple[int, str]:
    """(exit code, one-line reason) for any error a worker may raise."""
    if isinstance(e, TickstackError):
        return e.exit_code, str(e)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the worker image always has psycopg
        psycopg = None
    if psycopg is not None and isinstance(e, psycopg.Error):
        text = " ".join(str(e).split())
        return EXIT_FAILED, f"database error: {text or type(e).__name__}"
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover
        BotoCoreError = ClientError = ()  # noqa: N806
    if isinstance(e, (BotoCoreError, ClientError)):
        # e.g. an S3 server gone mid-run: "S3 error (EndpointConnectionError): Could not connect
        # to the endpoint URL: …" — the class says which kind, the text which request.
        text = " ".join(str(e).split())
        return EXIT_FAILED, f"S3 error ({type(e).__name__}): {text or 'no detail'}"
    if isinstance(e, OSError):
        return EXIT_FAILED, f"{type(e).__name__}: {e}"
    return EXIT_FAILED, f"{type(e).__name__}: {e}"


def printable(text: str) -> str:
    """Text from data made safe to echo on a terminal: control characters (escape sequences
    included) shown as \\xNN."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
