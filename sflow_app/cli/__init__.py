"""The ``sflow-app`` command (also ``python -m sflow_app``): one sub-command per question.

- ``config``: the settings a process started here would use, and where each came from;
- ``listen``: receive sFlow and print it, readable or as ``sflowtool -j`` does;
- ``top``: the busiest URIs, routes, memcache keys and operations, live;
- ``status``: what every service of this user on this host counted and sent, read from
  its shared state without changing it;
- ``run``: run a service instrumented without changing its code.

Never imported by ``import sflow_app``. Exit status: 0 ok, 1 nothing to report (see each
command), 2 usage errors (argparse's own convention) and errors a person must fix. Ctrl-C
ends ``listen`` and ``top`` with 0 (their normal stop); any other command dies of SIGINT
(130 in a shell), as a SIGTERM ends every one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
from collections.abc import Sequence

from . import _config_cmd, _listen_cmd, _run_cmd, _status_cmd, _top_cmd
from ._escape import utf8_output
from ._receive import Terminated

__all__ = ["main"]

# Each module: add_parser(subparsers) and the run(args) -> exit status it registers.
COMMANDS = (_config_cmd, _status_cmd, _listen_cmd, _top_cmd, _run_cmd)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="sflow-app",
        description="See what the sflow_app agent is configured to do and what it sends.",
        epilog="Run 'sflow-app COMMAND --help' for a command's options.",
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # After `run` comes a command with options of its own, never sflow-app's.
    run = argv[:1] == ["run"]
    args = _run_cmd.parse(parser(), argv[1:]) if run else parser().parse_args(argv)
    if sys.stdout is None:  # started with stdout closed (`>&-`): output goes nowhere
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    if not utf8_output() and isinstance(sys.stdout, io.TextIOWrapper):
        # A latin-1 or C locale: what it cannot show (a UTF-8 URI) shows as \u escapes
        # instead of ending the command with UnicodeEncodeError.
        sys.stdout.reconfigure(errors="backslashreplace")
    status = 0
    try:
        status = int(args.run(args))
        # Here, not at exit: a reader that left (`| head`) while the output still sat in
        # the buffer made the interpreter's own flush print "Exception ignored" and exit 120.
        sys.stdout.flush()
    except KeyboardInterrupt:
        # listen and top end at Ctrl-C with 0 by design (they catch it); config or status
        # interrupted must not read as success: `sflow-app config && exec gunicorn ...`.
        return _end_by(signal.SIGINT)
    except Terminated as stop:
        return _end_by(stop.signum)
    except BrokenPipeError:
        # `sflow-app listen | head`: the reader left; not an error (a command that had
        # finished keeps its own status). Whatever is still buffered goes to /dev/null, so
        # the flush at exit does not fail again; stderr too (`2>&1 | head`: it may be the
        # stream that broke, and nothing more is said).
        for stream in (sys.stdout, sys.stderr):
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
            except (OSError, ValueError, AttributeError):
                pass
    return status


def _end_by(signum: int) -> int:
    """Cleaned up; now end as the signal would have, so the shell or supervisor sees it
    (a shell script stops at a child killed by SIGINT, not at one that exits 0)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return 128 + signum  # not reached
