"""Volumes plugged into a running VM, as a real cloud's hot-plugged disks appear.

Each VM has a disk directory on the machine, bound onto itself as a *shared* mount before the
sandbox starts and bound into the VM at ``/dev/disk/by-id``; bubblewrap makes its copy a slave, so a
volume's directory bound into the disk directory later (attach) appears in the running VM at
``/dev/disk/by-id/virtio-<first 20 characters of the volume id>``, the name a KVM guest gives a Cinder
volume, and unbinding it (detach) makes it vanish.  A directory stands for the block device: a guest
agent bind-mounts it (``mount --bind``; a real disk would be ``mount``ed) where it wants, or Docker
bind-mounts it into a container.

Detach also unmounts every other mount of the volume inside the VM, in every mount namespace of its
processes (the guest's own binds, containers' binds, cloud-config ``mounts`` targets): a real guest
loses the device under all of them.  The unmounts are lazy, so a process with a file open keeps that
file; new lookups through those paths find nothing.

Only detach enters a VM's mount namespaces (a short helper process); only root (the cloud) runs it.
"""
import asyncio
import ctypes
import errno
import os
import subprocess
import sys

MS_BIND = 4096
MS_SHARED = 1 << 20
MNT_DETACH = 2
GUEST_DIR = "/dev/disk/by-id"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, flags):
    _check(_libc.mount(src.encode() if src else None, target.encode(), None, flags, None), f"mount {target}")


def _umount(target):
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def disk_name(volume_id):
    return "virtio-" + volume_id[:20]


def _unescape(field):
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _mount_root(path):
    """(st_dev as 'major:minor', path of `path` inside its file system) as mountinfo shows a bind of it."""
    path = os.path.realpath(path)
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    best = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ", 1)[0].split()
            if fields[2] != dev:
                continue
            root, mp = _unescape(fields[3]), _unescape(fields[4])
            if (path + "/").startswith(mp.rstrip("/") + "/") and (best is None or len(mp) > len(best[1])):
                best = (root, mp)
    if best is None:
        return dev, path
    root, mp = best
    rel = os.path.relpath(path, mp)
    return dev, os.path.normpath(os.path.join(root, rel)) if rel != "." else root


class DiskSlots:
    """The per-VM directory seen as /dev/disk/by-id inside the VM."""

    def __init__(self, path):
        self.path = path

    def create(self):
        os.makedirs(self.path, exist_ok=True)
        os.chmod(self.path, 0o755)
        _mount(self.path, self.path, MS_BIND)
        _mount(None, self.path, MS_SHARED)

    def bwrap_args(self):
        return ["--perms", "0755", "--dir", "/dev/disk", "--perms", "0755", "--dir", GUEST_DIR,
                "--bind", self.path, GUEST_DIR]

    def plug(self, volume_id, host_dir):
        slot = os.path.join(self.path, disk_name(volume_id))
        os.makedirs(slot, exist_ok=True)
        _mount(host_dir, slot, MS_BIND)

    def unplug(self, volume_id):
        slot = os.path.join(self.path, disk_name(volume_id))
        _umount(slot)
        try:
            os.rmdir(slot)
        except FileNotFoundError:
            pass

    def destroy(self):
        """Unmount everything under the directory and remove it (never rmtree: volumes may be bound there)."""
        if not os.path.isdir(self.path):
            return
        _umount(self.path)
        for name in os.listdir(self.path):
            _umount(os.path.join(self.path, name))
        # what the VM's root may have written there; --one-file-system: never into a volume still bound
        subprocess.run(["rm", "-rf", "--one-file-system", "--", self.path], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def mounts_of(pid, host_dir):
    """Mount points (as process pid sees them) of binds of host_dir or of directories inside it."""
    dev, root = _mount_root(host_dir)
    out = []
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split(" - ", 1)[0].split()
        mroot, mp = _unescape(fields[3]), _unescape(fields[4])
        if fields[2] == dev and (mroot == root or mroot.startswith(root.rstrip("/") + "/")):
            out.append(mp)
    return out


def mount_namespaces(pids):
    """{mount namespace inode: one pid in it}."""
    out = {}
    for pid in pids:
        try:
            out.setdefault(os.stat(f"/proc/{pid}/ns/mnt").st_ino, pid)
        except OSError:
            pass
    return out


# Run in a fresh single-threaded interpreter (setns into a mount namespace refuses threaded callers): enter
# the namespace and the root of process argv[1] (as `nsenter -m -r` does, but needing no binary in that root,
# which may be a container's), then lazily unmount argv[2:]; prints the failures.
_EVICT = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = sys.argv[1]
root = os.open(f"/proc/{pid}/root", os.O_RDONLY)
ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
if libc.setns(ns, 0x00020000) != 0:
    sys.exit("setns: " + os.strerror(ctypes.get_errno()))
os.fchdir(root)
os.chroot(".")
for mp in sys.argv[2:]:
    if libc.umount2(mp.encode(), 2) != 0:
        print(mp + ": " + os.strerror(ctypes.get_errno()))
"""


async def evict(pids, host_dir):
    """Lazily unmount every mount of host_dir in the mount namespaces of pids; the failures, if any."""
    errors = []
    for pid in mount_namespaces(pids).values():
        mps = sorted(set(mounts_of(pid, host_dir)), key=lambda p: p.count("/"), reverse=True)
        if not mps:
            continue
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", _EVICT, str(pid), *mps,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0 or out.strip():
            errors.append(f"pid {pid}: {out.decode(errors='replace').strip()}")
    return errors
