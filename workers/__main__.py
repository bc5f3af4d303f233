"""`python -m workers <command>` (the commands: workers/app/cli.py)."""

def main() -> None:
    """Run the command, then leave without C++ static destructors: Arrow's worker threads were
    seen to abort an otherwise finished process at interpreter exit now and then
    ("terminate called without an active exception", apache/arrow#34314), turning exit 0 or 2
    into -6. Everything of ours is committed or flushed by then."""
    import os
    import sys

    from workers.core import interrupts
    from workers.core.memory import choose_arrow_pool

    # SIGTERM (systemd, Kubernetes, `timeout`) stops every command as Ctrl-C does: the same
    # cleanup, exit 130. The live stream replaces it with its own graceful stop while it runs.
    interrupts.install()
    choose_arrow_pool()  # before anything imports pyarrow
    code = 0
    try:
        from workers.app.cli import app

        app()
    except KeyboardInterrupt:  # before the CLI took over (while importing)
        print(f"interrupted by {interrupts.last_signal()}", file=sys.stderr)
        code = interrupts.EXIT_INTERRUPTED
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            code = 1
        else:
            code = e.code or 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


main()
