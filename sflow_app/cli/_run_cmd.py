"""``sflow-app run [--] COMMAND ARGS...``: run a Python service instrumented, unchanged.

Everything from COMMAND on is the command's own (``sflow-app run gunicorn --workers 2
app:app``), as with ``env``, ``nice`` or ``timeout``: ``run``'s own options (only ``-h``)
come before it, and ``--`` ends them for a command whose name starts with ``-``.

The command replaces this process (``exec``): no wrapper is left behind, signals reach
the server directly and PID 1 in a container stays the server. What it inherits is
``PYTHONPATH`` with sflow_app's bootstrap folder first, whose ``sitecustomize`` (chaining
any existing one) installs the import hooks of ``sflow_app._autoinstrument`` in every
Python process started from there: gunicorn, uvicorn, uWSGI, ``python app.py``...
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import sflow_app

BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(sflow_app.__file__)), "_bootstrap")
USAGE_ERROR, NOT_EXECUTABLE, NOT_FOUND = 2, 126, 127
USAGE = "sflow-app run [-h] [--] COMMAND [ARGS ...]"
HELP = ("-h", "--help")
SHELL = "/bin/sh"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run a command with sflow_app instrumenting it, no code change",
        description=(
            "Run COMMAND (gunicorn, uvicorn, uwsgi, python app.py, ...) with sflow_app "
            "instrumenting the Python processes it starts: Flask, Django, Starlette/FastAPI, "
            "any WSGI or ASGI application a server loads, and pymemcache. The command "
            "replaces this process; its exit status is the command's own (127: not found, "
            "or its #! interpreter not found; 126: not executable; 2: no command, or an "
            "option before it that run does not have). Everything from COMMAND on is the "
            "command's own; '--' first lets through a command whose name starts with '-'. "
            "A script without a #! line runs with /bin/sh, as env and the shell run it. "
            "SFLOW_APP_DISABLED_INTEGRATIONS skips integrations; SFLOW_APP_DISABLE=1 turns "
            "everything off."
        ),
        usage=USAGE,
    )
    # Shown by --help only: main() splits the command off before argparse sees it
    # (argparse's "..." took `run --workers 2 app` for options of sflow-app itself).
    p.add_argument("command", nargs="...", help="the command and its arguments")
    p.set_defaults(run=run)


def parse(parser: argparse.ArgumentParser, args: Sequence[str]) -> argparse.Namespace:
    """``sflow-app run ARGS``: only ``-h`` goes through argparse (it prints the help and
    exits); the command is taken as it is, and any other option is run()'s to refuse."""
    options, command = split(args)
    namespace = parser.parse_args(["run", *[o for o in options if o in HELP][:1]])
    namespace.options, namespace.command = options, command
    return namespace


def split(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``run``'s own options and the command, by getopt's rule (as ``env``, ``nice`` and
    ``timeout`` split theirs): the first argument that is not an option starts the
    command; ``--`` ends the options and is dropped."""
    for i, arg in enumerate(args):
        if arg == "--":
            return list(args[:i]), list(args[i + 1 :])
        if not arg.startswith("-") or arg == "-":
            return list(args[:i]), list(args[i:])
    return list(args), []


def usage_error(message: str) -> int:
    print(f"usage: {USAGE}\nsflow-app run: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def command_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the bootstrap folder first on PYTHONPATH (once: a child that already
    carries it keeps it as it is)."""
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if BOOTSTRAP not in (os.path.abspath(p) for p in paths):
        paths.insert(0, BOOTSTRAP)
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def run(args: Any) -> int:
    unknown = [o for o in args.options if o not in HELP]
    if unknown:
        # An option of run's own that does not exist (env says the same): a typo, or a
        # command named like an option, which `--` lets through.
        return usage_error(
            f"unrecognized option {unknown[0]!r}: the command comes first, its options "
            "after it; a command whose name starts with '-' goes after '--'"
        )
    argv = list(args.command)
    if not argv:
        return usage_error("no command given")
    program = argv[0]
    path = program if os.sep in program else shutil.which(program)
    if path is None or not os.path.exists(path):
        print(f"sflow-app run: {program}: command not found", file=sys.stderr)
        return NOT_FOUND
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        print(f"sflow-app run: {program}: not executable", file=sys.stderr)
        return NOT_EXECUTABLE
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        execute(path, argv, command_env(os.environ))
    except FileNotFoundError:
        # The file is there (checked above): what is missing is what runs it. Said as
        # the shell says it, with its status, not a bare "No such file or directory".
        print(
            f"sflow-app run: {program}: cannot execute: its interpreter (the #! line) or "
            "loader was not found",
            file=sys.stderr,
        )
        return NOT_FOUND
    except OSError as exc:
        why = exc.strerror
        if exc.errno == errno.ENOEXEC:  # what bash says of it
            why = f"cannot execute binary file: {why}"
        print(f"sflow-app run: {program}: {why}", file=sys.stderr)
        return NOT_EXECUTABLE
    return 0  # not reached


def execute(path: str, argv: list[str], env: dict[str, str]) -> None:
    """``execve``, or for a text file without a ``#!`` line, ``/bin/sh`` running it.

    The kernel refuses such a file (ENOEXEC); execvp(3) (POSIX), and so ``env``, ``nice``,
    ``timeout`` and the shell, run it with ``/bin/sh``, and start scripts written without
    a ``#!`` line rely on it. Python's os.execvp does not: it raises "Exec format error",
    which reads as a broken binary. A binary (a NUL in its first line, as bash judges;
    an ELF file for another machine) is not a script: that error stands."""
    try:
        os.execve(path, argv, env)
    except OSError as exc:
        if exc.errno != errno.ENOEXEC or not _text(path):
            raise
    os.execve(SHELL, [SHELL, path, *argv[1:]], env)


def _text(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:  # execute-only: /bin/sh could not read it either
        return False
    return b"\0" not in head.split(b"\n", 1)[0]
