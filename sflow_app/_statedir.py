"""Where shared state lives: a private directory per user, and which instance we are.

``SFLOW_APP_STATE_DIR`` (default ``/dev/shm``) is a *parent*, usually a sticky,
world-writable folder where any local user can create names. The agent never uses a
name there directly: it creates ``<parent>/sflow-app-<uid>/`` (mode 0700) and checks it
through a directory descriptor (``fstat``: a directory, ours, no group or other access)
before using it; every file inside is opened relative to that descriptor with
``O_NOFOLLOW``, and nothing is ever ``chdir``-ed to. If the name is squatted (another
owner, a file, a symlink, loose permissions), a few further names are tried, then the
same in ``$XDG_RUNTIME_DIR`` and in the temp dir. Nothing that is not ours is used,
unlinked or followed.

An *instance* is the set of processes of one server start: the master and its workers,
recycled or not, or one standalone process. It is recognised by its root process: from
this process up through parents in the same process group running the same executable
(a parent we may not inspect, e.g. a root master whose workers dropped privileges, counts
as the same). The root's pid and start time (in clock ticks since boot, from
``/proc/<pid>/stat``) name the instance, so a pid reused later is another instance.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable

VERSION_PREFIX = "sflow-app-"  # files of earlier versions: <parent>/sflow-app-<uid>-*
NAMES_PER_PLACE = 4  # sflow-app-<uid>, then .1, .2, .3 when squatted


class PrivateDir:
    """An open, verified private directory: ``path`` and the descriptor ``fd``."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _places(parent: str, env_runtime: str | None) -> list[str]:
    places = [parent]
    if env_runtime:
        places.append(env_runtime)
    temp = tempfile.gettempdir()
    if temp not in places:
        places.append(temp)
    return places


class _NoNewFolder(OSError):
    """``parent`` takes no new folder (its reason said once for all the names)."""


def _open_dir(pfd: int, parent: str, name: str, create: bool = True) -> int:
    """Create (if needed and ``create``) and open ``parent/name`` (``pfd``: ``parent``,
    open); raise OSError if it is not safe."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        if create:
            os.mkdir(name, 0o700, dir_fd=pfd)
    except FileExistsError:
        pass
    except OSError as exc:  # read-only, not ours to write, full: alike for every name
        raise _NoNewFolder(f"{parent}: cannot create a folder: {exc.strerror}") from exc
    fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=pfd)
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISDIR(st.st_mode):
        problem = "not a directory"
    elif st.st_uid != os.getuid():
        problem = f"owned by uid {st.st_uid}"
    elif st.st_mode & 0o077:
        problem = f"mode {stat.S_IMODE(st.st_mode):o} lets others in"
    if problem is not None:
        os.close(fd)
        raise PermissionError(f"{os.path.join(parent, name)} is {problem}")
    return fd


def open_private(
    parent: str, env_runtime: str | None, create: bool = True
) -> tuple[PrivateDir, list[str]]:
    """The first safe candidate, and what was wrong with the places and names skipped
    before it (one reason per place that cannot be opened at all: missing, a file).
    ``create`` False: only one that exists (a reader that finds none has nothing to do).

    Raises OSError (with every reason) when no candidate is safe.
    """
    skipped: list[str] = []
    uid = os.getuid()
    for place in _places(parent, env_runtime):
        try:
            pfd = os.open(place, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            skipped.append(f"{place}: {exc.strerror or exc}")
            continue
        try:
            for i in range(NAMES_PER_PLACE):
                name = f"sflow-app-{uid}" + (f".{i}" if i else "")
                try:
                    fd = _open_dir(pfd, place, name, create)
                except _NoNewFolder as exc:
                    if str(exc) not in skipped:  # said once; a later name may exist already
                        skipped.append(str(exc))
                    continue
                except OSError as exc:
                    if isinstance(exc, PermissionError) and exc.filename is None:
                        skipped.append(str(exc))  # ours: names the folder and what is wrong
                    else:
                        skipped.append(f"{os.path.join(place, name)}: {exc.strerror or exc}")
                    continue
                return PrivateDir(os.path.join(place, name), fd), skipped
        finally:
            os.close(pfd)
    raise PermissionError("no usable private state directory: " + "; ".join(skipped))


def remove_old_versions(parent: str, in_use: Callable[[int], bool]) -> None:
    """Remove files earlier versions left directly in ``parent``
    (``sflow-app-<uid>-<key>.state`` / ``.sock``), unless a live process holds one.

    ``in_use(fd)`` says whether a live process holds a state file (a record lock).
    """
    prefix = f"{VERSION_PREFIX}{os.getuid()}-"
    try:
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        names = [n for n in os.listdir(pfd) if n.startswith(prefix)]
        live = set()
        for name in names:
            if name.endswith(".state") and _held(pfd, name, in_use):
                live.add(name[: -len(".state")])
        for name in names:
            base = name.rsplit(".", 1)[0]
            if base in live:
                continue
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                ours = st.st_uid == os.getuid()
                if ours and (stat.S_ISREG(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
                    os.unlink(name, dir_fd=pfd)
    finally:
        os.close(pfd)


def _held(dir_fd: int, name: str, in_use: Callable[[int], bool]) -> bool:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return in_use(fd)
    finally:
        os.close(fd)


# -- instances ---------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, start time) of a process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[2]), int(fields[19])


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    st = _stat(pid)
    return None if st is None else st[2]


def instance_root() -> tuple[int, int]:
    """(pid, start time) of the root process of this process's instance."""
    pid = os.getpid()
    mine = _stat(pid)
    if mine is None:  # no /proc: each process group is an instance
        return os.getpgid(0), 0
    exe = _exe(pid)
    root, root_start = pid, mine[2]
    ppid = mine[0]
    while ppid > 0:  # pid 1 too: a master that is a container's first process
        parent = _stat(ppid)
        if parent is None or parent[1] != mine[1]:
            break  # another process group: a shell, a supervisor
        parent_exe = _exe(ppid)
        if parent_exe is not None and parent_exe != exe:
            break  # a different program (a shell script's interpreter, a launcher)
        root, root_start, ppid = ppid, parent[2], parent[0]
    return root, root_start


def alive(pid: int, started: int) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs."""
    return start_time(pid) == started
