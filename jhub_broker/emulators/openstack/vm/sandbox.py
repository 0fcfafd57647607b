"""A VM's file system and the bubblewrap command line that confines it.

Layout inside the sandbox (the root is bwrap's own tmpfs, so a VM's root may
create top-level directories, as on a real VM):

- every top-level entry of the host root is bound read-only (symlinks copied),
  except the private ones below;
- ``/etc``, ``/home``, ``/root``, ``/tmp``, ``/var``: per-VM directories under
  ``<root_dir>/<server_id>/`` (``/etc`` starts as a copy of the host's);
  ``/var/lib/dpkg`` is the host's, read-only, so ``dpkg -s`` answers;
- ``/run``, ``/mnt``, ``/media``, ``/dev/shm``: tmpfs; ``/dev``, ``/proc``: fresh
  (``/proc/sys`` and ``/proc/sysrq-trigger`` read-only), ``/sys`` read-only;
- ``/opt``, ``/srv``: tmpfs holding read-only binds of the host's entries, except
  ``/opt/jhub-broker``, which only pre-baked images get (the venv, read-only);
- the cloud's state (root_dir, volumes, state dir) is hidden behind tmpfs;
- attached volumes: bound at ``/mnt/volumes/<volume_id>`` and at the targets
  of the cloud-config ``mounts`` key; every VM also has ``/dev/disk/by-id``, where
  volumes attached at boot or while it runs appear (disks.py);
- docker-host images add rights and a cgroup of the VM's own (dockerhost.py).

Privileges: bwrap (run by root, no user namespace) drops every capability but
the few a VM's root needs to create users and become them; bwrap also sets
no_new_privs, so setuid binaries cannot regain anything (``sudo`` works for
root -> user, not user -> root).  PID, IPC and UTS namespaces are private;
the network namespace is the host's (see bindshim.c).
"""
import os
import re
import shutil

CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
        "CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]

PRIVATE_DIRS = ["etc", "home", "root", "tmp", "var"]
TMPFS_DIRS = ["run", "mnt", "media"]
# writable tmpfs holding read-only binds of the host's entries (VM root may add its own)
LAYERED_DIRS = ["opt", "srv"]
SPECIAL = {"proc", "dev", "sys", "lost+found", "old_root", *PRIVATE_DIRS, *TMPFS_DIRS, *LAYERED_DIRS}
GUEST_OPT = "/opt/jhub-broker"
GUEST_VENV = "/opt/jhub-broker/singleuser"

VM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sanitize_hostname(name, fallback):
    host = re.sub(r"[^a-z0-9-]+", "-", (name or "").lower()).strip("-")[:63].strip("-")
    return host or fallback


def prepare_dirs(vm_dir):
    """Make the per-VM writable directories (except etc, copied separately)."""
    modes = {"home": 0o755, "root": 0o700, "tmp": 0o1777, "var": 0o755}
    for name, mode in modes.items():
        path = os.path.join(vm_dir, name)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
    var = os.path.join(vm_dir, "var")
    for sub, mode in [("lib/cloud/seed/nocloud", 0o755), ("lib/jhub-broker", 0o755), ("lib/dpkg", 0o755),
                      ("log", 0o755), ("tmp", 0o1777), ("cache", 0o755), ("spool", 0o755),
                      ("mail", 0o2775), ("local", 0o755), ("opt", 0o755), ("backups", 0o755)]:
        path = os.path.join(var, sub)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
    for link, target in [("run", "/run"), ("lock", "/run/lock")]:
        path = os.path.join(var, link)
        if not os.path.lexists(path):
            os.symlink(target, path)


def configure_etc(etc, hostname, fixed_ip, shim_path):
    """Adjust the VM's private copy of /etc: identity, address, shim, cloud-init config dir."""
    def write(rel, text, mode=0o644):
        path = os.path.join(etc, rel)
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
            os.unlink(path)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    write("hostname", hostname + "\n")
    hosts = ""
    if os.path.isfile(os.path.join(etc, "hosts")) and not os.path.islink(os.path.join(etc, "hosts")):
        with open(os.path.join(etc, "hosts")) as f:
            hosts = f.read()
    write("hosts", hosts.rstrip("\n") + f"\n{fixed_ip}\t{hostname}\n" if fixed_ip else hosts)
    write("machine-id", os.urandom(16).hex() + "\n", 0o444)
    # a resolv.conf symlink into the host's /run would dangle in the VM
    resolv = os.path.join(etc, "resolv.conf")
    if os.path.islink(resolv):
        try:
            with open(os.path.realpath("/etc/resolv.conf")) as f:
                text = f.read()
        except OSError:
            text = "nameserver 127.0.0.53\n"
        write("resolv.conf", text)
    write("jhub-broker-vm-address", (fixed_ip or "") + "\n")
    os.makedirs(os.path.join(etc, "jhub-broker"), exist_ok=True)
    guest_shim = "/etc/jhub-broker/bindshim.so"
    if shim_path and fixed_ip:
        shutil.copy2(shim_path, os.path.join(etc, "jhub-broker", "bindshim.so"))
        write("ld.so.preload", guest_shim + "\n")
    elif os.path.lexists(os.path.join(etc, "ld.so.preload")):
        os.unlink(os.path.join(etc, "ld.so.preload"))
    ccd = os.path.join(etc, "cloud", "cloud.cfg.d")
    if os.path.isdir(ccd):
        for name in os.listdir(ccd):
            if name.endswith(".cfg") and name != "05_logging.cfg":
                os.unlink(os.path.join(ccd, name))
    return guest_shim


def existing_groups(etc):
    try:
        with open(os.path.join(etc, "group")) as f:
            return {line.split(":", 1)[0] for line in f if ":" in line}
    except OSError:
        return set()


def _under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


def bwrap_argv(bwrap, vm_dir, hostname, volumes, mount_binds, venv, hidden, command, extra_caps=(), extra=(),
               sys_args=None):
    """The bwrap command line.

    volumes: {volume_id: host_dir}; mount_binds: [(host_dir, guest_target)];
    venv: host path of the pre-baked venv or None; hidden: host paths to cover;
    extra_caps, extra: more capabilities and bwrap arguments (docker-host VMs, hot-plug disks);
    sys_args: how /sys is made (default: the host's, read-only).
    """
    argv = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--hostname", hostname, "--cap-drop", "ALL"]
    for cap in CAPS + [c for c in extra_caps if c not in CAPS]:
        argv += ["--cap-add", cap]
    ro_tops = []
    for name in sorted(os.listdir("/")):
        path = "/" + name
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif name in SPECIAL:
            continue
        elif os.path.isdir(path) or os.path.isfile(path):
            argv += ["--ro-bind", path, path]
            ro_tops.append(path)
    for name in PRIVATE_DIRS:
        argv += ["--bind", os.path.join(vm_dir, name), "/" + name]
    if os.path.isdir("/var/lib/dpkg"):
        argv += ["--ro-bind", "/var/lib/dpkg", "/var/lib/dpkg"]
    argv += ["--dev", "/dev", "--tmpfs", "/dev/shm", "--proc", "/proc"]
    argv += list(sys_args) if sys_args else ["--ro-bind", "/sys", "/sys"]
    # a file owner (root) may write these without any capability: make them read-only
    for path in ("/proc/sys", "/proc/sysrq-trigger"):
        if os.path.exists(path):
            argv += ["--ro-bind", path, path]
    for name in TMPFS_DIRS:
        argv += ["--tmpfs", "/" + name]
    argv += ["--perms", "1777", "--dir", "/run/lock"]
    for top in LAYERED_DIRS:
        top = "/" + top
        argv += ["--tmpfs", top]
        if not os.path.isdir(top):
            continue
        for name in sorted(os.listdir(top)):
            path = os.path.join(top, name)
            if path == GUEST_OPT:
                continue
            if os.path.islink(path):
                argv += ["--symlink", os.readlink(path), path]
            else:
                argv += ["--ro-bind", path, path]
    # bwrap makes missing mount points 0700: give the guest's users a way in
    if venv:
        argv += ["--perms", "0755", "--dir", GUEST_OPT, "--ro-bind", venv, GUEST_VENV]
    for path in hidden:
        path = os.path.abspath(path)
        if path.count("/") >= 2 and any(_under(path, top) for top in ro_tops) and os.path.isdir(path):
            argv += ["--tmpfs", path]
    if volumes:
        argv += ["--perms", "0755", "--dir", "/mnt/volumes"]
    for vol_id, host_dir in volumes.items():
        argv += ["--bind", host_dir, f"/mnt/volumes/{vol_id}"]
    for host_dir, target in mount_binds:
        # like cloud-init's mounts module (util.ensure_dir): missing dirs are made 0755
        argv += ["--perms", "0755", "--dir", target, "--bind", host_dir, target]
    argv += list(extra)
    argv += ["--chdir", "/", "--setenv", "PATH", VM_PATH, "--"] + list(command)
    return argv
