"""Start or restart a real `python -m jupyterhub` in a directory (the restart command of the auth admin tests).

    python hubctl.py start|restart DIR

``DIR`` holds ``jupyterhub_config.py``; the hub's pid goes to ``DIR/hub.pid``, its output to ``DIR/hub.log``.
``restart`` returns once the old hub has exited and the new one is launched (like ``systemctl restart``).
"""
import os
import signal
import subprocess
import sys
import time


def stop(d):
    try:
        with open(os.path.join(d, "hub.pid")) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(300):
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not reaped (no init reaper)
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def start(d):
    with open(os.path.join(d, "hub.log"), "ab") as log:
        p = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", os.path.join(d, "jupyterhub_config.py")],
                             cwd=d, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    with open(os.path.join(d, "hub.pid"), "w") as f:
        f.write(str(p.pid))


if __name__ == "__main__":
    action, directory = sys.argv[1], sys.argv[2]
    if action in ("stop", "restart"):
        stop(directory)
    if action in ("start", "restart"):
        start(directory)
