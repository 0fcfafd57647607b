"""What a VM's first boot runs: Debian's real cloud-init, fed by a NoCloud seed.

Real cloud-init 22.4 runs inside the sandbox (all four stages take ~1-2 s), so
user_data gets cloud-init's own semantics: ``#!`` scripts, ``#cloud-config``
(write_files incl. encoding/owner/permissions/defer, runcmd, bootcmd, users,
final_message, ...), MIME multi-part, gzip.  Only modules that make sense
without a kernel of our own are enabled; the others are replaced:

- ``mounts``: the sandbox cannot mount, so the runner reads the ``mounts`` key
  here (``mount_targets``) and bind-mounts attached volumes at those targets
  before boot; cloud-init's module is disabled.
- ``packages``/``package_update``/``package_upgrade``: nothing can be installed
  system-wide (``/usr`` is the host's, read-only); a warning goes to the console.
- networking, hostname (set by the sandbox), growpart/resizefs, ssh host keys,
  locale, ntp, power-state-change are disabled.

When cloud-init is not installed (or config ``vm.cloud_init`` is false),
``#!`` scripts run directly and cloud-config gets a console warning.
"""
import email
import gzip
import re
import shlex

import yaml

INIT_MODULES = ["seed_random", "bootcmd", "write-files", "users-groups"]
CONFIG_MODULES = ["set-passwords", "timezone", "runcmd"]
FINAL_MODULES = ["write-files-deferred", "scripts-vendor", "scripts-per-once", "scripts-per-boot",
                 "scripts-per-instance", "scripts-user", "final-message"]

DEFAULT_GROUPS = ["adm", "audio", "cdrom", "dialout", "dip", "floppy", "netdev", "plugdev", "sudo", "video"]

MARKER_DIR = "/var/lib/jhub-broker"  # inside the VM; host sees it under <vm dir>/var/lib/jhub-broker


def user_data_bytes(user_data):
    """The user_data as bytes, or raise ValueError when it cannot be used."""
    if user_data is None:
        return b""
    if isinstance(user_data, bytes):
        if user_data[:2] == b"\x1f\x8b":
            return user_data
        try:
            user_data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"user_data is neither UTF-8 text nor gzip: {e}") from None
        return user_data
    if isinstance(user_data, str):
        return user_data.encode("utf-8", errors="surrogateescape")
    raise ValueError(f"user_data has unusable type {type(user_data).__name__}")


def cloud_configs(data):
    """Every cloud-config dict found in user_data bytes (plain, gzip or MIME multi-part)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except OSError:
            return []
    text = data.decode("utf-8", errors="replace")
    out = []
    if text.startswith("#cloud-config"):
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError:
            return []
        if isinstance(cfg, dict):
            out.append(cfg)
    elif text.lstrip().lower().startswith(("content-type:", "mime-version:")):
        msg = email.message_from_string(text)
        for part in msg.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True) or b""
            if part.get_content_type() == "text/cloud-config" or payload.startswith(b"#cloud-config"):
                try:
                    cfg = yaml.safe_load(payload)
                except yaml.YAMLError:
                    continue
                if isinstance(cfg, dict):
                    out.append(cfg)
    return out


def is_script(data):
    return data.startswith(b"#!")


def _device_key(dev):
    """Normalise /dev/vdb, vdb, /dev/sdb, /dev/xvdb1 -> 'b'; None if not a disk name."""
    name = dev.rsplit("/", 1)[-1]
    m = re.fullmatch(r"(?:x?vd|sd|hd)([a-z]+)\d*", name)
    return m.group(1) if m else None


def mount_targets(configs, attachments):
    """[(volume_id, target)] for cloud-config ``mounts`` entries naming an attached volume.

    attachments: [(volume_id, device)] of the volumes attached to the server.
    Devices may be /dev/vdX (or sdX/xvdX, with or without partition number) or
    /dev/disk/by-id/virtio-<first 20 chars of the volume id>.
    """
    by_key = {}
    for vol_id, device in attachments:
        key = _device_key(device or "")
        if key:
            by_key[key] = vol_id
    out = []
    for cfg in configs:
        for entry in cfg.get("mounts") or []:
            if not isinstance(entry, (list, tuple)) or len(entry) < 2 or not entry[1]:
                continue
            dev, target = str(entry[0]), str(entry[1])
            if not target.startswith("/"):
                continue
            vol_id = None
            if "/disk/by-id/virtio-" in dev:
                serial = dev.rsplit("virtio-", 1)[1].split("-part", 1)[0]
                vol_id = next((v for v, _ in attachments if v[:20] == serial[:20]), None)
            else:
                key = _device_key(dev)
                vol_id = by_key.get(key) if key else None
            if vol_id:
                out.append((vol_id, target.rstrip("/") or "/"))
    return out


def wants_packages(configs):
    return any(cfg.get("packages") or cfg.get("package_update") or cfg.get("package_upgrade")
               for cfg in configs)


def cloud_cfg(default_user, existing_groups):
    """The VM's private /etc/cloud/cloud.cfg."""
    groups = [g for g in DEFAULT_GROUPS if g in existing_groups]
    return {
        "datasource_list": ["NoCloud", "None"],
        "datasource": {"NoCloud": {}},
        "network": {"config": "disabled"},
        "users": ["default"],
        "disable_root": False,
        "preserve_hostname": True,
        "manage_etc_hosts": False,
        "cloud_init_modules": INIT_MODULES,
        "cloud_config_modules": CONFIG_MODULES,
        "cloud_final_modules": FINAL_MODULES,
        "system_info": {
            "distro": "debian",
            "default_user": {"name": default_user, "lock_passwd": True, "gecos": default_user.capitalize(),
                             "groups": groups, "sudo": ["ALL=(ALL) NOPASSWD:ALL"], "shell": "/bin/bash"},
            "paths": {"cloud_dir": "/var/lib/cloud/", "templates_dir": "/etc/cloud/templates/"},
        },
        "output": {"all": "| tee -a /var/log/cloud-init-output.log"},
    }


def meta_data(server, hostname):
    return {"instance-id": server["id"], "local-hostname": hostname}


def boot_script(use_cloud_init, data, configs, warnings=()):
    """The shell script the sandbox runs as its main process."""
    q = shlex.quote
    lines = ["#!/bin/sh", "# generated by jhub_broker's local cloud: first boot of this VM",
             "exec </dev/null", "cd /", f"mkdir -p {MARKER_DIR}", f": > {MARKER_DIR}/started",
             "echo '[    1.000000] systemd[1]: Reached target Basic System.'"]
    for w in warnings:
        lines.append(f"echo {q('[    1.000000] WARNING: ' + w)}")
    if use_cloud_init:
        lines += [
            "cloud-init init --local",
            "cloud-init init",
            "cloud-init modules --mode=config",
        ]
        if wants_packages(configs):
            lines.append("echo " + q("cloud-init: WARNING: packages/package_update/package_upgrade ignored: "
                                     "this local-cloud VM cannot install system packages "
                                     "(/usr is read-only); use a pre-baked image or pip in a venv"))
        lines.append("cloud-init modules --mode=final")
    elif is_script(data):
        lines += [f"chmod 700 {MARKER_DIR}/user-data", f"{MARKER_DIR}/user-data",
                  "echo \"user-data script exited with status $?\""]
    elif data.strip():
        lines.append("echo " + q("WARNING: cloud-init is not available in this local cloud: "
                                 "user_data that is not a #! script was ignored"))
    lines += [f": > {MARKER_DIR}/boot-finished", "exec sleep infinity", ""]
    return "\n".join(lines)
