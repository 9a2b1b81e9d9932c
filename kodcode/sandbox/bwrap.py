"""The bubblewrap command line that confines one fork server, and a probe for whether it works here."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["BWRAP_ENV", "bwrap_argv", "bwrap_available", "bwrap_unavailable_reason", "python_roots"]

# The whole environment the sandbox sees; nothing of the host's (no tokens, no keys) crosses over.
BWRAP_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
}
_SYSTEM_LINKS = ("lib", "lib64", "bin", "sbin")


def python_roots() -> list[str]:
    """Directories the interpreter and its packages live in, bound read-only into the sandbox."""
    roots = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    roots.add(os.path.dirname(os.path.realpath(sys.executable)).rsplit("/bin", 1)[0])
    return sorted(r for r in roots if r and r != "/" and not r.startswith("/usr/"))


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def bwrap_argv(*, tmpfs_mb: int, privileged: bool) -> list[str]:
    """bwrap options (without the command) for a sandbox with no network, read-only system and a capped /tmp.

    `privileged` (we are root): no user namespace; the server keeps only CAP_SETUID/CAP_SETGID to drop
    to its own uid, which makes RLIMIT_NPROC count. Otherwise a user namespace maps our own uid.
    """
    size = str(tmpfs_mb << 20)
    argv = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--new-session", "--die-with-parent", "--clearenv"]
    if privileged:
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for link in _SYSTEM_LINKS:
        host = f"/{link}"
        if os.path.islink(host):
            argv += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            argv += ["--ro-bind", host, host]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", size, "--perms", "1777", "--tmpfs", "/tmp",
             "--size", size, "--perms", "1777", "--tmpfs", "/dev/shm"]
    made: set[str] = {"/tmp", "/usr", "/dev", "/proc"}
    for root in python_roots():
        for parent in _ancestors(root):
            if parent not in made:
                made.add(parent)
                argv += ["--perms", "0755", "--dir", parent]
        argv += ["--ro-bind", root, root]
        made.add(root)
    for key, value in BWRAP_ENV.items():
        argv += ["--setenv", key, value]
    argv += ["--chdir", "/tmp"]
    return argv


@functools.cache
def _probe() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    argv = bwrap_argv(tmpfs_mb=8, privileged=os.geteuid() == 0)
    argv += [sys.executable, "-I", "-c", "import os; print('ok')"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap cannot start: {exc}"
    if done.returncode != 0 or done.stdout.strip() != "ok":
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"bubblewrap cannot create a sandbox here: {last}"
    return None


def bwrap_available() -> bool:
    """True when a bubblewrap sandbox can be created on this machine (probed once, then cached)."""
    return _probe() is None


def bwrap_unavailable_reason() -> str | None:
    """Why bwrap_available() is False, as one line; None when it is available."""
    return _probe()
