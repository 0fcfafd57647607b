"""Docker-host VMs: the extra rights a real dockerd needs inside a VM's sandbox, and their cleanup.

Only VMs of an image with the property ``jhub_broker_docker_host=true`` get them:

- capabilities: ``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN`` (dockerd, runc: mounts, namespaces), and those
  Docker gives containers by default and so must hold itself (``CAP_MKNOD``, ``CAP_NET_RAW``,
  ``CAP_SETFCAP``, ``CAP_SETPCAP``, ``CAP_SYS_CHROOT``);
- a cgroup of their own in every hierarchy of the machine, made under the cloud process's own cgroup
  and bound over the hierarchy's mount point inside the VM, so the VM sees it as its cgroup root (as a
  cgroup namespace would show it) and dockerd needs no ``--cgroup-parent``; the whole sandbox runs in it,
  which is also how deleting the VM finds and kills every container process and shim;
- ``/etc/docker/daemon.json`` with what the sandbox needs (no iptables, no bridge: containers use
  ``--network host``), as an image would ship it; the VM's own cloud-init starts dockerd;
- the container images baked by ``scripts/bake-container-image.sh``, read-only under
  ``/opt/jhub-broker/container-images``.

Cost in isolation: with ``CAP_SYS_ADMIN`` such a VM can remount the machine's read-only directories
writable, and with ``CAP_NET_ADMIN`` change the machine's network.  See docs/local-cloud.md.
"""
import json
import os
import shlex
import shutil
import signal
import time

PROPERTY = "jhub_broker_docker_host"
EXTRA_CAPS = ["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETPCAP",
              "CAP_SYS_CHROOT"]
IMAGES_DIR = "/opt/jhub-broker/container-images"  # host and guest path
CGROUP_TOP = "/sys/fs/cgroup"
DAEMON_JSON = {"iptables": False, "ip6tables": False, "bridge": "none", "ip-forward": False,
               "ip-masq": False, "storage-driver": "overlay2", "userland-proxy": False}


def is_docker_host(image):
    return str((image or {}).get(PROPERTY, "")).lower() == "true"


def docker_installed():
    """dockerd (and its client) where a VM finds them: the machine's read-only /usr."""
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    return all(shutil.which(cmd, path=path) for cmd in ("dockerd", "containerd", "runc", "docker"))


def write_daemon_json(etc):
    os.makedirs(os.path.join(etc, "docker"), exist_ok=True)
    with open(os.path.join(etc, "docker", "daemon.json"), "w") as f:
        json.dump(DAEMON_JSON, f, indent=2)


def _unescape(field):
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def hierarchies():
    """[(mount point, host dir of this process's cgroup)] for each cgroup hierarchy mounted under /sys/fs/cgroup."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            num, ctrls, path = line.rstrip("\n").split(":", 2)
            own["" if num == "0" and not ctrls else ctrls] = path
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fields, (fstype, _src, opts) = left.split(), right.split()[:3]
            root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
            if fstype not in ("cgroup", "cgroup2") or os.path.dirname(mountpoint) != CGROUP_TOP:
                continue
            if fstype == "cgroup2":
                path = own.get("")
            else:
                opts = set(opts.split(","))
                path = next((p for c, p in own.items() if c and set(c.split(",")) <= opts), None)
            if path is None or not (path + "/").startswith(root.rstrip("/") + "/"):
                continue
            out.append((mountpoint, os.path.join(mountpoint, os.path.relpath(path, root))))
    return out


class VMCgroups:
    """One VM's cgroup in each hierarchy: made before boot, emptied and removed when the VM goes."""

    def __init__(self, server_id):
        self.name = "jhub-vm-" + server_id
        self.dirs = []  # [(mount point, host dir)]

    def create(self):
        found = hierarchies()
        if not found:
            # checked on machines with cgroup v1 hierarchies under /sys/fs/cgroup (ours); a machine with only
            # the unified hierarchy at /sys/fs/cgroup would need the VM's processes in a leaf below its cgroup
            raise OSError("docker-host VMs need the cgroup v1 hierarchies mounted under /sys/fs/cgroup/; "
                          "this machine has none")
        for mountpoint, parent in found:
            path = os.path.join(parent, self.name)
            os.makedirs(path, exist_ok=True)
            self.dirs.append((mountpoint, path))
            # a cpuset cgroup without cpus/mems refuses tasks
            for knob in ("cpuset.cpus", "cpuset.mems"):
                src = os.path.join(parent, knob)
                if os.path.exists(src) and os.path.exists(os.path.join(path, knob)):
                    with open(src) as f:
                        value = f.read().strip()
                    with open(os.path.join(path, knob), "w") as f:
                        f.write(value)
        return self

    def sys_args(self):
        """The VM's /sys: the machine's, read-only, except /sys/fs/cgroup/<hierarchy>, the VM's own cgroup, writable.

        /sys is not bound whole: a bind is recursive, and runc takes the first cgroup mount of a hierarchy
        it finds in mountinfo, which would be the machine's one hidden under the VM's.
        """
        args = ["--tmpfs", "/sys"]
        for top in ("/sys", "/sys/fs"):
            for name in sorted(os.listdir(top)):
                path = os.path.join(top, name)
                if path in ("/sys/fs", CGROUP_TOP):
                    continue
                args += ["--symlink", os.readlink(path), path] if os.path.islink(path) else ["--ro-bind", path, path]
            if top == "/sys":
                args += ["--dir", "/sys/fs"]
        args += ["--tmpfs", CGROUP_TOP]
        for mountpoint, path in self.dirs:
            args += ["--bind", path, mountpoint]
        return args + ["--remount-ro", CGROUP_TOP, "--remount-ro", "/sys"]

    def wrap(self, argv):
        """argv run by a shell that first moves itself into the VM's cgroups (then execs argv)."""
        files = " ".join(shlex.quote(os.path.join(p, "cgroup.procs")) for _, p in self.dirs)
        script = f'for f in {files}; do echo $$ > "$f" || exit 125; done; exec "$@"'
        return ["/bin/sh", "-c", script, "sh"] + list(argv)

    def pids(self):
        out = set()
        for _, top in self.dirs:
            for d, _, _ in os.walk(top):
                try:
                    with open(os.path.join(d, "cgroup.procs")) as f:
                        out.update(int(p) for p in f.read().split())
                except (OSError, ValueError):
                    pass
        return out

    def kill_all(self, timeout=10.0):
        """SIGKILL every process left in the VM's cgroups (containers, shims); [] when none is left."""
        deadline = time.monotonic() + timeout
        left = self.pids()
        while left and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
            left = self.pids()
        return sorted(left)

    def remove(self, timeout=5.0):
        """rmdir every cgroup of the VM, deepest first; the paths that could not be removed."""
        deadline = time.monotonic() + timeout
        failed = []
        for _, top in self.dirs:
            if not os.path.isdir(top):
                continue
            dirs = [d for d, _, _ in os.walk(top)]
            for d in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
                while True:
                    try:
                        os.rmdir(d)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        # a killed task leaves its cgroup a moment after it is reaped
                        if time.monotonic() > deadline:
                            failed.append(d)
                            break
                        time.sleep(0.05)
        return failed
