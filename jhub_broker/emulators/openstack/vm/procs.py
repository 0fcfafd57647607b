"""Find and kill the host processes of one sandbox (by PID namespace)."""
import asyncio
import os
import signal
import time


def pid_namespace(pid):
    """Inode of pid's PID namespace, or None if it is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def members(ns_inode):
    """Host pids living in the PID namespace ns_inode."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == ns_inode:
                    out.append(int(entry))
            except OSError:
                pass
    return out


async def kill_sandbox(bwrap_pid, ns_inode, timeout=10.0):
    """SIGKILL the outer bwrap and everything in the namespace; wait until none is left.

    Returns the pids still alive after timeout (normally []).
    """
    for pid in [bwrap_pid] + (members(ns_inode) if ns_inode else []):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass
    deadline = time.monotonic() + timeout
    left = members(ns_inode) if ns_inode else []
    while left and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await asyncio.sleep(0.05)
        left = members(ns_inode)
    return left
