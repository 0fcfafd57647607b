"""VMRunner: sandboxed VMs that really run their user_data (bubblewrap + cloud-init)."""
import asyncio
import base64
import hashlib
import os
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
import uuid

import pytest

from jhub_broker.emulators.openstack.cloud import Cloud, CloudConfig
from jhub_broker.emulators.openstack.vm import procs, runner as runner_mod
from jhub_broker.emulators.openstack.vm.runner import VMBootError, VMRunner
from tests.fixtures.cloud import _private_ranges

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None or os.geteuid() != 0,
                                reason="VMs need bubblewrap, run as root")

VENV = "/opt/jhub-broker/singleuser"
# addresses of this session's own loopback block, as the clouds of tests/fixtures/cloud.py get: concurrent
# test sessions must not listen on each other's addresses
_RANGES = _private_ranges({})
FIXED = _RANGES["default_network"]["cidr"].rsplit(".", 1)[0] + "."
FLOATING = _RANGES["external_network"]["cidr"].rsplit(".", 1)[0] + "."


@pytest.fixture
async def cloud(tmp_path):
    c = Cloud(CloudConfig.load(overrides={}), state_dir=str(tmp_path / "state"))
    c.vm_runner = VMRunner(c, str(tmp_path / "state" / "vms"))
    yield c
    await c.vm_runner.shutdown()


def make_server(cloud, name, fixed_ip, user_data, image_name=None):
    sid = str(uuid.uuid4())
    image = ""
    if image_name:
        image = {"id": next(i["id"] for i in cloud.images.values() if i["name"] == image_name)}
    server = {"id": sid, "name": name, "status": "BUILD", "image": image, "_fixed_ip": fixed_ip,
              "_user_data": user_data, "flavor": {"original_name": "m1.small", "vcpus": 1, "ram": 2048},
              "tenant_id": cloud.default_project["id"], "metadata": {}, "tags": []}
    cloud.servers[sid] = server
    return server


def attach_volume(cloud, server, device="/dev/vdb", volume_id=None):
    vid = volume_id or str(uuid.uuid4())
    vol = cloud.volumes.get(vid) or {"id": vid, "name": "data", "size": 1, "status": "available",
                                     "attachments": [], "metadata": {}, "_project_id": server["tenant_id"]}
    vol["status"] = "in-use"
    vol["attachments"] = [{"id": vid, "attachment_id": str(uuid.uuid4()), "volume_id": vid,
                           "server_id": server["id"], "host_name": None, "device": device,
                           "attached_at": "2026-01-01T00:00:00.000000"}]
    cloud.volumes[vid] = vol
    return vid


def detach_all(cloud):
    for vol in cloud.volumes.values():
        vol["attachments"] = []
        vol["status"] = "available"


async def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def booted(cloud, server, timeout=90):
    r = cloud.vm_runner
    await wait_for(lambda: r.boot_finished(server["id"]), timeout,
                   f"boot of {server['name']}:\n" + r.console_log(server["id"])[-3000:])


def guest_file(cloud, server, path):
    """Read a file the VM wrote under one of its private directories (host side)."""
    host = os.path.join(cloud.vm_runner.vm_dir(server["id"]), path.lstrip("/"))
    with open(host) as f:
        return f.read()


def http_get(url, timeout=3):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


async def http_eventually(url, timeout=30):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            return await asyncio.to_thread(http_get, url)
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last = e
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never answered: {last}")


def http_server_script(marker, port=8000, bind="0.0.0.0"):
    return textwrap.dedent(f"""\
        #!/bin/sh
        mkdir -p /srv/www && echo {marker} > /srv/www/index.html
        cd /srv/www && nohup python3 -m http.server {port} --bind {bind} >/dev/null 2>&1 &
        echo started-http-{marker}
        """)


async def test_two_vms_listen_on_same_port_each_on_own_fixed_ip(cloud):
    a = make_server(cloud, "vm-a", f"{FIXED}10", http_server_script("alpha"))
    b = make_server(cloud, "vm-b", f"{FIXED}11", http_server_script("beta", bind="::"))
    await asyncio.gather(cloud.vm_runner.boot(a), cloud.vm_runner.boot(b))
    assert (await http_eventually(f"http://{FIXED}10:8000/")).strip() == "alpha"
    assert (await http_eventually(f"http://{FIXED}11:8000/")).strip() == "beta"
    # nothing landed on the host's wildcard address
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 8000)) != 0


async def test_cloud_config_users_runcmd_write_files(cloud):
    payload = base64.b64encode(b"encoded content\n").decode()
    user_data = textwrap.dedent(f"""\
        #cloud-config
        users:
          - default
          - name: jovyan
            shell: /bin/bash
            groups: [users]
        write_files:
          - path: /etc/jhub-test/plain.txt
            content: plain content
            permissions: '0640'
          - path: /etc/jhub-test/b64.txt
            encoding: b64
            content: {payload}
          - path: /home/jovyan/owned.txt
            content: mine
            owner: jovyan:jovyan
            defer: true
        runcmd:
          - [runuser, -u, jovyan, --, sh, -c, 'id -u > /tmp/jovyan-uid; id -un >> /tmp/jovyan-uid']
          - echo runcmd-string-form > /root/runcmd.txt
        final_message: "test boot finished"
        """)
    s = make_server(cloud, "cc", f"{FIXED}12", user_data, image_name="ubuntu-24.04")
    await cloud.vm_runner.boot(s)
    await booted(cloud, s)
    uid, name = guest_file(cloud, s, "/tmp/jovyan-uid").split()
    assert int(uid) != 0 and name == "jovyan"
    assert guest_file(cloud, s, "/etc/jhub-test/plain.txt") == "plain content"
    mode = os.stat(os.path.join(cloud.vm_runner.vm_dir(s["id"]), "etc/jhub-test/plain.txt")).st_mode
    assert oct(mode & 0o777) == "0o640"
    assert guest_file(cloud, s, "/etc/jhub-test/b64.txt") == "encoded content\n"
    assert guest_file(cloud, s, "/root/runcmd.txt").strip() == "runcmd-string-form"
    owned = os.stat(os.path.join(cloud.vm_runner.vm_dir(s["id"]), "home/jovyan/owned.txt"))
    assert owned.st_uid == int(uid)
    passwd = guest_file(cloud, s, "/etc/passwd")
    assert "\nubuntu:" in passwd and "\njovyan:" in passwd  # 'default' user of an ubuntu image
    assert "test boot finished" in cloud.vm_runner.console_log(s["id"])


async def test_vm_cannot_change_the_host(cloud):
    with open("/etc/passwd", "rb") as f:
        passwd_before = hashlib.sha256(f.read()).hexdigest()
    host_hostname = socket.gethostname()
    marker = uuid.uuid4().hex
    user_data = textwrap.dedent(f"""\
        #!/bin/bash
        exec > /tmp/results 2>&1
        echo 'evil:x:0:0::/:/bin/sh' >> /etc/passwd; echo passwd=$?
        touch /usr/x-{marker}; echo usr=$?
        touch /root/x-{marker}; echo root=$?
        mkdir -p /tmp/m; mount -t tmpfs none /tmp/m; echo mount=$?
        umount /sys; echo umount=$?
        mount --bind /tmp /usr/lib; echo bindmount=$?
        hostname evil; echo hostname=$?
        echo caps=$(grep CapEff /proc/self/status | cut -f2)
        echo pid1=$(cat /proc/1/comm)
        """)
    s = make_server(cloud, "sandbox", f"{FIXED}13", user_data)
    await cloud.vm_runner.boot(s)
    await booted(cloud, s)
    res = dict(line.split("=", 1) for line in guest_file(cloud, s, "/tmp/results").split("\n") if "=" in line)
    assert res["passwd"] == "0" and res["root"] == "0"   # the VM's own /etc and /root
    assert res["usr"] != "0"                             # host /usr is read-only
    assert res["mount"] != "0" and res["umount"] != "0" and res["bindmount"] != "0"
    assert res["hostname"] != "0"
    assert int(res["caps"], 16) & (1 << 21) == 0         # no CAP_SYS_ADMIN
    assert res["pid1"] == "bwrap"                        # own PID namespace
    with open("/etc/passwd", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == passwd_before
    assert not os.path.exists(f"/usr/x-{marker}")
    assert not os.path.exists(f"/root/x-{marker}")
    assert "evil" in guest_file(cloud, s, "/etc/passwd")
    assert socket.gethostname() == host_hostname


async def test_volume_survives_vm_delete(cloud):
    r = cloud.vm_runner
    first = make_server(cloud, "writer", f"{FIXED}14", textwrap.dedent("""\
        #cloud-config
        users: [{name: jovyan, shell: /bin/bash}]
        mounts:
          - [/dev/vdb, /home/jovyan/work, ext4, "defaults,nofail", "0", "2"]
        runcmd:
          - chown jovyan:jovyan /home/jovyan/work
          - [runuser, -u, jovyan, --, sh, -c, 'echo precious > /home/jovyan/work/notes.txt']
          - ls /mnt/volumes > /root/volumes.txt
        """))
    vid = attach_volume(cloud, first)
    await r.boot(first)
    await booted(cloud, first)
    assert guest_file(cloud, first, "/root/volumes.txt").split() == [vid]
    await r.stop(first["id"])
    assert not os.path.exists(r.vm_dir(first["id"]))
    host_file = os.path.join(r.volume_path(vid), "notes.txt")
    assert open(host_file).read() == "precious\n"
    assert os.stat(r.volume_path(vid)).st_uid != 0  # the guest's chown stuck

    detach_all(cloud)
    second = make_server(cloud, "reader", f"{FIXED}15", textwrap.dedent(f"""\
        #cloud-config
        mounts:
          - [/dev/disk/by-id/virtio-{vid[:20]}, /data]
        runcmd:
          - cat /data/notes.txt > /root/seen.txt
          - cat /mnt/volumes/{vid}/notes.txt >> /root/seen.txt
        """))
    attach_volume(cloud, second, device="/dev/vdc", volume_id=vid)
    await r.boot(second)
    await booted(cloud, second)
    assert guest_file(cloud, second, "/root/seen.txt") == "precious\nprecious\n"


async def test_console_log(cloud):
    s = make_server(cloud, "chatty", f"{FIXED}16", "#!/bin/sh\necho hello-console-$(hostname)\necho oops >&2\n")
    r = cloud.vm_runner
    await r.boot(s)
    await booted(cloud, s)
    log = r.console_log(s["id"])
    assert log.startswith("[    0.000000] Linux version")
    assert "hello-console-chatty" in log and "oops" in log
    assert "Cloud-init v." in log
    assert os.path.exists(os.path.join(r.vm_dir(s["id"]), "console.log"))
    await r.stop(s["id"])
    assert r.console_log(s["id"]) == ""
    assert r.console_log("no-such-server") == ""


async def test_packages_warn_but_do_not_fail(cloud):
    s = make_server(cloud, "pkgs", f"{FIXED}17",
                    "#cloud-config\npackages: [htop]\nruncmd:\n  - echo after-packages\n")
    await cloud.vm_runner.boot(s)
    await booted(cloud, s)
    log = cloud.vm_runner.console_log(s["id"])
    assert "packages/package_update/package_upgrade ignored" in log
    assert "after-packages" in log


async def test_floating_ip_reaches_fixed_ip(cloud):
    r = cloud.vm_runner
    s = make_server(cloud, "web", f"{FIXED}18", http_server_script("floating", port=8765))
    await r.boot(s)
    assert (await http_eventually(f"http://{FIXED}18:8765/")).strip() == "floating"
    await r.add_floating_ip(f"{FLOATING}10", f"{FIXED}18")
    assert (await http_eventually(f"http://{FLOATING}10:8765/")).strip() == "floating"
    await r.remove_floating_ip(f"{FLOATING}10")
    with socket.socket() as sock:
        assert sock.connect_ex((f"{FLOATING}10", 8765)) != 0


async def test_stop_leaves_no_process(cloud):
    r = cloud.vm_runner
    marker = uuid.uuid4().hex[:12]
    s = make_server(cloud, "procs", f"{FIXED}19", textwrap.dedent(f"""\
        #!/bin/bash
        useradd -m worker
        nohup sleep 1000 >/dev/null 2>&1 &
        setsid bash -c 'exec -a daemon-{marker} sleep 1000' >/dev/null 2>&1 &
        runuser -u worker -- bash -c 'setsid sleep 1001 & (exec -a user-{marker} sleep 1002) &' &
        echo spawned
        """))
    await r.boot(s)
    await booted(cloud, s)
    ns = r.vms[s["id"]].ns_inode
    await wait_for(lambda: subprocess.run(["pgrep", "-f", f"user-{marker}"], capture_output=True).returncode == 0,
                   20, "the user's process")
    assert len(procs.members(ns)) >= 4
    await r.stop(s["id"])
    assert procs.members(ns) == []
    for pattern in (f"daemon-{marker}", f"user-{marker}", "bwrap.*" + s["id"]):
        assert subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 1, pattern
    assert not os.path.exists(r.vm_dir(s["id"]))


@pytest.mark.skipif(not os.path.exists(os.path.join(VENV, "bin", "jupyterhub-singleuser")),
                    reason="run scripts/bake-image.sh first")
async def test_prebaked_image_has_singleuser_venv(cloud):
    user_data = textwrap.dedent(f"""\
        #cloud-config
        users: [{{name: jovyan, shell: /bin/bash}}]
        runcmd:
          - [runuser, -u, jovyan, --, sh, -c, 'cd /tmp && {VENV}/bin/jupyterhub-singleuser --version > /tmp/version 2>&1; id -u >> /tmp/version']
        """)
    s = make_server(cloud, "baked", f"{FIXED}20", user_data, image_name="ubuntu-24.04-jupyter")
    plain = make_server(cloud, "plain", f"{FIXED}21", "#!/bin/sh\nls -A /opt/jhub-broker > /tmp/opt 2>&1; echo rc=$? >> /tmp/opt\n",
                        image_name="ubuntu-24.04")
    await asyncio.gather(cloud.vm_runner.boot(s), cloud.vm_runner.boot(plain))
    await booted(cloud, s, timeout=120)
    await booted(cloud, plain)
    version, uid = guest_file(cloud, s, "/tmp/version").split()[-2:]
    assert version[0].isdigit() and int(uid) != 0
    assert "rc=0" not in guest_file(cloud, plain, "/tmp/opt")  # not pre-baked: no venv


async def test_boot_errors(cloud, monkeypatch):
    r = cloud.vm_runner
    bad = make_server(cloud, "bad-ud", f"{FIXED}22", b"\xff\xfe\x00garbage")
    with pytest.raises(VMBootError, match="user_data unreadable"):
        await r.boot(bad)

    ro = make_server(cloud, "bad-mount", f"{FIXED}23", "#cloud-config\nmounts:\n  - [vdb, /usr/share/nope-x]\n")
    attach_volume(cloud, ro)
    with pytest.raises(VMBootError, match="failed to start"):
        await r.boot(ro)
    assert ro["id"] not in r.vms

    real_which = shutil.which
    monkeypatch.setattr(runner_mod.shutil, "which", lambda name, *a, **k: None if name == "bwrap" else real_which(name))
    s = make_server(cloud, "no-bwrap", f"{FIXED}24", "#!/bin/sh\ntrue\n")
    with pytest.raises(VMBootError, match="bwrap"):
        await r.boot(s)


async def test_without_cloud_init_shell_scripts_still_run(tmp_path):
    c = Cloud(CloudConfig.load(overrides={"vm": {"cloud_init": False}}), state_dir=str(tmp_path / "state"))
    r = c.vm_runner = VMRunner(c, str(tmp_path / "state" / "vms"))
    try:
        s = make_server(c, "plain-sh", f"{FIXED}25", "#!/bin/sh\necho direct-$(id -u) > /root/out\n")
        await r.boot(s)
        await booted(c, s)
        assert guest_file(c, s, "/root/out").strip() == "direct-0"
        assert "Cloud-init v." not in r.console_log(s["id"])
    finally:
        await r.shutdown()


async def test_stop_during_boot(cloud):
    r = cloud.vm_runner
    s = make_server(cloud, "short-lived", f"{FIXED}26", "#!/bin/sh\nsleep 100 &\n")
    boot = asyncio.ensure_future(r.boot(s))
    await asyncio.sleep(0)
    await r.stop(s["id"])
    try:
        await boot
    except VMBootError:
        pass
    assert s["id"] not in r.vms
    assert not os.path.exists(r.vm_dir(s["id"]))
    assert subprocess.run(["pgrep", "-f", "bwrap.*" + s["id"]], capture_output=True).returncode == 1
