"""Run the local cloud's servers as bubblewrap sandboxes that execute their user_data.

See sandbox.py (file system, privileges), bindshim.c (each VM's own address),
cloudinit.py (how user_data runs), forwarder.py (floating IPs).
"""
import asyncio
import json
import logging
import os
import shutil
import subprocess
import time

import yaml

from .. import secgroups
from . import cloudinit, dockerhost, procs, sandbox
from .disks import DiskSlots, evict
from .forwarder import FloatingForwarder
from .shim import ShimBuildError, build_shim

log = logging.getLogger("jhub_broker.cloud.vm")

DEFAULT_VENV = "/opt/jhub-broker/singleuser"
START_TIMEOUT = 30.0


class VMBootError(Exception):
    """The VM could not start; the message becomes the server's fault."""


class _VM:
    def __init__(self, server_id, vm_dir, fixed_ip, proc, ns_inode):
        self.server_id = server_id
        self.dir = vm_dir
        self.fixed_ip = fixed_ip
        self.proc = proc
        self.ns_inode = ns_inode
        self.console = None
        self.disks = None  # DiskSlots: /dev/disk/by-id inside the VM
        self.cgroups = None  # dockerhost.VMCgroups of a docker-host VM


class VMRunner:
    def __init__(self, cloud, root_dir):
        self.cloud = cloud
        self.root_dir = os.path.abspath(root_dir)
        self.volumes_dir = os.path.join(os.path.dirname(self.root_dir), "volumes")
        self.vms = {}
        self.forwarders = {}  # floating address -> FloatingForwarder
        self._boot_tokens = {}  # server id -> token of the boot in progress (stop() revokes it)
        self._removals = set()  # background removals of deleted VMs' files
        self._ingress = {}  # server id -> the allow-list last written to its VM
        os.makedirs(self.root_dir, exist_ok=True)
        self._unmount_stale_disks()

    def _unmount_stale_disks(self):
        """Disk mounts left in this state dir by a cloud that was killed (its VMs died with it)."""
        top = os.path.join(self.root_dir, "_disks")
        for name in os.listdir(top) if os.path.isdir(top) else []:
            try:
                DiskSlots(os.path.join(top, name)).destroy()
            except (OSError, subprocess.CalledProcessError) as e:
                log.error("unmounting stale disks %s failed: %s", name, e)

    # -- helpers -------------------------------------------------------------
    def _vm_config(self):
        try:
            return dict(self.cloud.config.get("vm") or {})
        except AttributeError:
            return {}

    def vm_dir(self, server_id):
        return os.path.join(self.root_dir, server_id)

    def volume_path(self, volume_id):
        path = os.path.join(self.volumes_dir, volume_id)
        os.makedirs(path, exist_ok=True)
        return path

    def console_log(self, server_id):
        try:
            with open(os.path.join(self.vm_dir(server_id), "console.log"), "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def boot_finished(self, server_id):
        """True once the VM's first-boot (cloud-init final stage) has completed."""
        return os.path.exists(os.path.join(self.vm_dir(server_id), "var/lib/jhub-broker/boot-finished"))

    def _attachments(self, server):
        out = []
        for vol in getattr(self.cloud, "volumes", {}).values():
            for att in vol.get("attachments") or []:
                if att.get("server_id") == server["id"]:
                    out.append((vol["id"], att.get("device")))
        return out

    def disks_dir(self, server_id):
        # outside vm_dir, which is removed whole: a bound volume must never be met there
        return os.path.join(self.root_dir, "_disks", server_id)

    def _image(self, server):
        image = server.get("image")
        if isinstance(image, dict) and image.get("id"):
            return self.cloud.images.get(image["id"]) or {}
        return {}

    def _use_cloud_init(self):
        setting = self._vm_config().get("cloud_init", "auto")
        have = shutil.which("cloud-init") is not None
        if setting in (False, "false", "never", "off", "builtin"):
            return False
        if setting in (True, "true", "always", "on", "real") and not have:
            raise VMBootError("cloud-init is required (vm.cloud_init) but not installed on the host")
        return have

    # -- lifecycle -----------------------------------------------------------
    async def boot(self, server):
        server_id = server["id"]
        bwrap = shutil.which("bwrap")
        if not bwrap:
            raise VMBootError("bubblewrap (bwrap) is not installed on the host: cannot run VMs "
                              "(apt-get install bubblewrap, or set vm.enabled: false)")
        try:
            data = cloudinit.user_data_bytes(server.get("_user_data"))
        except ValueError as e:
            raise VMBootError(f"user_data unreadable: {e}") from None
        use_ci = self._use_cloud_init()
        token = self._boot_tokens[server_id] = object()
        if server_id in self.vms:
            await self._kill(server_id)
        fixed_ip = server.get("_fixed_ip")
        name = sandbox.sanitize_hostname(server.get("name"), "vm-" + server_id[:8])
        vm_dir = self.vm_dir(server_id)
        image = self._image(server)

        venv = None
        if str(image.get("jhub_broker_prebaked", "")).lower() == "true":
            venv = self._vm_config().get("prebaked_python") or DEFAULT_VENV
            if not os.path.isfile(os.path.join(venv, "bin", "python")):
                raise VMBootError(f"image {image.get('name')!r} is pre-baked but the host has no venv at {venv} "
                                  "(run scripts/bake-image.sh)")
        docker_host = dockerhost.is_docker_host(image)
        if docker_host and not dockerhost.docker_installed():
            raise VMBootError(f"image {image.get('name')!r} is a docker-host image but Debian's docker.io is not "
                              "installed on the host (run scripts/setup.sh)")

        try:
            shim = await build_shim(os.path.join(self.root_dir, "_shim")) if fixed_ip else None
        except ShimBuildError as e:
            raise VMBootError(str(e)) from None

        configs = cloudinit.cloud_configs(data)
        attachments = self._attachments(server)
        volumes = {vol_id: self.volume_path(vol_id) for vol_id, _ in attachments}
        mount_binds = [(volumes[v], target) for v, target in cloudinit.mount_targets(configs, attachments)]

        if os.path.exists(vm_dir):
            await _remove_tree(vm_dir)
        os.makedirs(vm_dir)
        proc = await asyncio.create_subprocess_exec("cp", "-a", "/etc", os.path.join(vm_dir, "etc"),
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0 and not os.path.isdir(os.path.join(vm_dir, "etc")):
            raise VMBootError("copying /etc for the VM failed: " + err.decode(errors="replace"))

        def prepare():
            sandbox.prepare_dirs(vm_dir)
            etc = os.path.join(vm_dir, "etc")
            sandbox.configure_etc(etc, name, fixed_ip, shim)
            if docker_host:
                dockerhost.write_daemon_json(etc)
            self._write_ingress(server_id)
            default_user = "ubuntu" if image.get("os_distro") == "ubuntu" else "debian"
            with open(os.path.join(etc, "cloud", "cloud.cfg") if os.path.isdir(os.path.join(etc, "cloud"))
                      else os.devnull, "w") as f:
                yaml.safe_dump(cloudinit.cloud_cfg(default_user, sandbox.existing_groups(etc)), f,
                               sort_keys=False)
            seed = os.path.join(vm_dir, "var/lib/cloud/seed/nocloud")
            with open(os.path.join(seed, "user-data"), "wb") as f:
                f.write(data)
            with open(os.path.join(seed, "meta-data"), "w") as f:
                yaml.safe_dump(cloudinit.meta_data(server, name), f)
            with open(os.path.join(seed, "vendor-data"), "w") as f:
                f.write("")
            marker = os.path.join(vm_dir, "var/lib/jhub-broker")
            with open(os.path.join(marker, "user-data"), "wb") as f:
                f.write(data)
            warnings = []
            if not use_ci and configs:
                warnings.append("cloud-config ignored: cloud-init is not available")
            with open(os.path.join(etc, "jhub-broker", "boot.sh"), "w") as f:
                f.write(cloudinit.boot_script(use_ci, data, configs, warnings))
            with open(os.path.join(vm_dir, "console.log"), "w") as f:
                f.write(self._header(server, name, image, fixed_ip, attachments, mount_binds))

        try:
            await asyncio.to_thread(prepare)
        except OSError as e:
            raise VMBootError(f"preparing the VM's file system failed: {e}") from None
        if self._boot_tokens.get(server_id) is not token:
            await _remove_tree(vm_dir)
            raise VMBootError("server was deleted while booting")

        hidden = [self.root_dir, self.volumes_dir]
        if getattr(self.cloud, "state_dir", None):
            hidden.append(self.cloud.state_dir)
        r, w = os.pipe()
        disks = DiskSlots(self.disks_dir(server_id))
        cgroups = dockerhost.VMCgroups(server_id) if docker_host else None
        try:
            await asyncio.to_thread(disks.destroy)  # left by a cloud that died
            disks.create()
            for vol_id, host_dir in volumes.items():
                disks.plug(vol_id, host_dir)
            extra = disks.bwrap_args()
            if cgroups:
                cgroups.create()
                if os.path.isdir(dockerhost.IMAGES_DIR):
                    extra += ["--perms", "0755", "--dir", sandbox.GUEST_OPT,
                              "--ro-bind", dockerhost.IMAGES_DIR, dockerhost.IMAGES_DIR]
        except (OSError, subprocess.CalledProcessError) as e:
            await asyncio.to_thread(self._release, disks, cgroups)
            os.close(r)
            os.close(w)
            raise VMBootError(f"preparing the VM's disks or cgroups failed: {e}") from None
        argv = sandbox.bwrap_argv(bwrap, vm_dir, name, volumes, mount_binds, venv, hidden,
                                  ["/bin/sh", "/etc/jhub-broker/boot.sh"],
                                  extra_caps=dockerhost.EXTRA_CAPS if docker_host else (), extra=extra,
                                  sys_args=cgroups.sys_args() if cgroups else None)
        argv = argv[:1] + ["--info-fd", str(w)] + argv[1:]
        if cgroups:
            argv = cgroups.wrap(argv)
        env = {"PATH": sandbox.VM_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "vt220", "USER": "root",
               "LOGNAME": "root", "SHELL": "/bin/sh"}
        console = open(os.path.join(vm_dir, "console.log"), "ab", buffering=0)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=console, stderr=console, env=env, pass_fds=(w,), start_new_session=True)
        except OSError as e:
            console.close()
            os.close(r)
            os.close(w)
            await asyncio.to_thread(self._release, disks, cgroups)
            raise VMBootError(f"starting bwrap failed: {e}") from None
        os.close(w)
        try:
            info = await asyncio.to_thread(_read_info, r)
        finally:
            os.close(r)
        ns_inode = info.get("pid-namespace") or procs.pid_namespace(info.get("child-pid", 0))
        vm = _VM(server_id, vm_dir, fixed_ip, proc, ns_inode)
        vm.console = console
        vm.disks, vm.cgroups = disks, cgroups
        self.vms[server_id] = vm

        if self._boot_tokens.get(server_id) is not token:
            await self.stop(server_id)
            raise VMBootError("server was deleted while booting")
        started = os.path.join(vm_dir, "var/lib/jhub-broker/started")
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(started):
            if proc.returncode is not None or time.monotonic() > deadline:
                await self._kill(server_id)
                tail = self._boot_error_text(vm_dir)
                raise VMBootError(f"VM sandbox failed to start (bwrap exit {proc.returncode}): {tail}")
            await asyncio.sleep(0.02)
        log.info("VM %s (%s) booted at %s", server_id, name, fixed_ip)

    def _boot_error_text(self, vm_dir):
        try:
            with open(os.path.join(vm_dir, "console.log"), errors="replace") as f:
                lines = [ln for ln in f.read().splitlines() if ln and not ln.startswith("[ ")]
        except OSError:
            return "no output"
        return " / ".join(lines[-5:]) or "no output"

    def _header(self, server, name, image, fixed_ip, attachments, mount_binds):
        flavor = server.get("flavor") or {}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = [
            "[    0.000000] Linux version 6.1.0-jhub-broker-amd64 (local cloud emulator; bubblewrap sandbox) #1 SMP",
            "[    0.000000] Command line: BOOT_IMAGE=/boot/vmlinuz-6.1.0 root=LABEL=cloudimg-rootfs ro console=ttyS0",
            "[    0.000000] DMI: OpenStack Foundation OpenStack Nova, BIOS 1.16.2 (local cloud)",
            "[    0.000000] Hypervisor detected: jhub-broker local cloud",
            f"[    0.000000] Booting instance {server['id']} ({name}) at {stamp}",
            f"[    0.000000] image: {image.get('name', '(volume)')}  flavor: {flavor.get('original_name', '?')}"
            f"  vcpus: {flavor.get('vcpus', '?')}  ram: {flavor.get('ram', '?')} MB",
            f"[    0.010000] virtio_net virtio0 eth0: fixed IP {fixed_ip}",
        ]
        for vol_id, device in attachments:
            lines.append(f"[    0.020000] virtio_blk virtio1: [{(device or '?').rsplit('/', 1)[-1]}] volume {vol_id}"
                         f" (/mnt/volumes/{vol_id})")
        for _, target in mount_binds:
            lines.append(f"[    0.030000] EXT4-fs: mounted filesystem at {target}")
        return "\n".join(lines) + "\n"

    async def _kill(self, server_id):
        vm = self.vms.pop(server_id, None)
        if vm is None:
            return
        left = await procs.kill_sandbox(vm.proc.pid, vm.ns_inode)
        if left:
            log.error("VM %s: processes %s survived SIGKILL", server_id, left)
        try:
            await asyncio.wait_for(vm.proc.wait(), 10)
        except asyncio.TimeoutError:
            pass
        await asyncio.to_thread(self._release, vm.disks, vm.cgroups)
        if vm.console:
            vm.console.close()
        if vm.fixed_ip:
            for floating, fwd in list(self.forwarders.items()):
                if fwd.fixed == vm.fixed_ip:
                    del self.forwarders[floating]
                    await fwd.stop()

    @staticmethod
    def _release(disks, cgroups):
        """Kill what is left in the VM's cgroups (containers, shims), remove them, unmount its disks."""
        if cgroups is not None:
            left = cgroups.kill_all()
            if left:
                log.error("processes %s of %s survived SIGKILL", left, cgroups.name)
            failed = cgroups.remove()
            if failed:
                log.error("cgroups %s could not be removed", failed)
        if disks is not None:
            try:
                disks.destroy()
            except (OSError, subprocess.CalledProcessError) as e:
                log.error("unmounting the disks of a VM failed: %s", e)

    # -- hot-plug --------------------------------------------------------------
    def _log_console(self, vm, text):
        if vm.console:
            try:
                vm.console.write(f"[{time.monotonic():12.6f}] {text}\n".encode())
            except OSError:
                pass

    async def attach_volume(self, server_id, volume_id, device=None):
        """A volume attached to a running VM appears at /dev/disk/by-id/virtio-<id prefix> inside it."""
        vm = self.vms.get(server_id)
        if vm is None or vm.disks is None:
            return  # not running: the next boot binds it
        await asyncio.to_thread(vm.disks.plug, volume_id, self.volume_path(volume_id))
        self._log_console(vm, f"virtio_blk: [{(device or '?').rsplit('/', 1)[-1]}] hot-plugged volume {volume_id}"
                              f" (/dev/disk/by-id/virtio-{volume_id[:20]})")

    async def detach_volume(self, server_id, volume_id):
        """The volume vanishes from the running VM: from /dev/disk/by-id and every mount of it inside."""
        vm = self.vms.get(server_id)
        if vm is None or vm.disks is None:
            return
        pids = set(procs.members(vm.ns_inode) if vm.ns_inode else [])
        if vm.cgroups is not None:
            pids |= await asyncio.to_thread(vm.cgroups.pids)
        errors = await evict(sorted(pids), self.volume_path(volume_id))
        if errors:
            log.error("VM %s: volume %s still mounted at %s", server_id, volume_id, errors)
        await asyncio.to_thread(vm.disks.unplug, volume_id)
        self._log_console(vm, f"virtio_blk: volume {volume_id} removed")

    async def stop(self, server_id):
        self._boot_tokens.pop(server_id, None)
        self._ingress.pop(server_id, None)
        await self._kill(server_id)
        vm_dir = self.vm_dir(server_id)
        if os.path.isdir(vm_dir):
            # a docker-host's image layers are tens of thousands of files (a minute to unlink on a busy
            # disk): the VM is gone once its processes, cgroups and mounts are; its files go in the background
            trash = os.path.join(self.root_dir, "_trash", f"{server_id}-{time.monotonic_ns()}")
            os.makedirs(os.path.dirname(trash), exist_ok=True)
            os.rename(vm_dir, trash)
            task = asyncio.ensure_future(_remove_tree(trash))
            self._removals.add(task)
            task.add_done_callback(self._removals.discard)
        self.refresh_ingress()  # its address leaves the groups it was in

    # -- security groups (see secgroups.py) ----------------------------------------
    def _write_ingress(self, server_id):
        text = secgroups.render(secgroups.allow_lines(self.cloud, server_id))
        if self._ingress.get(server_id) == text:
            return
        # The VM's root owns its /etc while it runs and could plant symlinks there pointing into the
        # host: every step is taken relative to a directory opened without following links.
        etc = os.path.join(self.vm_dir(server_id), "etc")
        subdir, name = secgroups.GUEST_PATH.split("/etc/", 1)[1].split("/")
        nofollow = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        etc_fd = os.open(etc, nofollow)
        try:
            dir_fd = os.open(subdir, nofollow, dir_fd=etc_fd)
        finally:
            os.close(etc_fd)
        try:
            tmp = f".{name}.{os.getpid()}.{time.monotonic_ns()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                os.fchmod(f.fileno(), 0o644)
            # the shim reads either the old list or the new one, never half of one
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        self._ingress[server_id] = text

    def refresh_ingress(self):
        """Rewrite the allow-list of every VM whose groups, rules or group members changed."""
        for server_id in list(self.vms):
            try:
                self._write_ingress(server_id)
            except Exception:  # noqa: BLE001 - called after every API request: never fail the request
                log.exception("VM %s: cannot update its security-group allow-list", server_id)

    async def add_floating_ip(self, floating_address, fixed_address):
        await self.remove_floating_ip(floating_address)
        fwd = FloatingForwarder(floating_address, fixed_address)
        self.forwarders[floating_address] = fwd
        await fwd.start()

    async def remove_floating_ip(self, floating_address):
        fwd = self.forwarders.pop(floating_address, None)
        if fwd:
            await fwd.stop()

    async def shutdown(self):
        for server_id in list(self.vms):
            await self._kill(server_id)
        for floating in list(self.forwarders):
            await self.remove_floating_ip(floating)
        if self._removals:
            await asyncio.wait(list(self._removals), timeout=10)  # the launcher SIGKILLs after 20 s


async def _remove_tree(path):
    """rm -rf that never crosses a mount (a volume bound by mistake stays whole)."""
    if not os.path.lexists(path):
        return
    proc = await asyncio.create_subprocess_exec("rm", "-rf", "--one-file-system", "--", path,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        log.error("removing %s failed: %s", path, err.decode(errors="replace").strip())


def _read_info(fd):
    """bwrap's --info-fd JSON (written once the namespaces exist), or {} on EOF."""
    buf = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        try:
            return json.loads(buf)
        except ValueError:
            continue
    return {}
