"""Start or restart a real `python -m jupyterhub` in a directory (the restart command of the auth admin tests).

    python hubctl.py start|restart DIR

``DIR`` holds ``jupyterhub_config.py``; the hub's pid goes to ``DIR/hub.pid``, its output to ``DIR/hub.log``.
``restart`` returns once the old hub has exited and the new one is launched (like ``systemctl restart``).

With a ``DIR/hub.cgroup`` file naming a cgroup v2 directory, the hub (and so its proxy and services) runs in that
cgroup, and ``stop`` kills every process in it (``cgroup.kill``), as systemd's default KillMode=control-group does
on ``systemctl restart``: whatever the hub started and did not move out of its cgroup dies with it.
"""
import os
import signal
import subprocess
import sys
import time


def hub_cgroup(d):
    try:
        with open(os.path.join(d, "hub.cgroup")) as f:
            return f.read().strip()
    except OSError:
        return ""


def kill_cgroup(cg):
    with open(os.path.join(cg, "cgroup.kill"), "w") as f:
        f.write("1")
    for _ in range(300):
        with open(os.path.join(cg, "cgroup.procs")) as f:
            if not f.read().split():
                print(f"hubctl: killed every process of cgroup {cg}", file=sys.stderr, flush=True)
                return
        time.sleep(0.1)
    raise SystemExit(f"processes left in {cg}")


def stop(d):
    cg = hub_cgroup(d)
    if cg:
        return kill_cgroup(cg)
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


def unit_environment(d):
    """The hub's environment as its unit defines it (systemd's EnvironmentFile=): written at the first start from
    the caller's environment, read at every restart, so a restart asked for by a process that does not hold the
    hub's secrets (the broker's restart helper) starts the hub with them, as ``systemctl restart`` does."""
    path = os.path.join(d, "hub.env")
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            for key in ("JUPYTERHUB_CRYPT_KEY",):
                if key in os.environ:
                    f.write(f"{key}={os.environ[key]}\n")
    env = dict(os.environ)
    with open(path) as f:
        env.update(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    return env


def start(d):
    cg = hub_cgroup(d)
    env = unit_environment(d)

    def join():  # in the child, before exec: the hub and everything it starts live in the hub's cgroup
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write("0")

    with open(os.path.join(d, "hub.log"), "ab") as log:
        p = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", os.path.join(d, "jupyterhub_config.py")],
                             cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                             preexec_fn=join if cg else None)
    with open(os.path.join(d, "hub.pid"), "w") as f:
        f.write(str(p.pid))


if __name__ == "__main__":
    action, directory = sys.argv[1], sys.argv[2]
    if action in ("stop", "restart"):
        stop(directory)
    if action in ("start", "restart"):
        start(directory)
