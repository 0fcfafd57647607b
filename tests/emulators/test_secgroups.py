"""Security groups are enforced for VMs: a connection reaches a VM's port (on its fixed IP or through its
floating IP) only when an ingress rule of one of its groups allows the source address; rule changes
apply to new connections without a reboot."""
import base64
import http.client
import os
import shutil
import textwrap
import time

import pytest

from tests.fixtures.cloud import start_cloud_process

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None or os.geteuid() != 0,
                                reason="executing VMs need bubblewrap, run as root")
PORT = 8181


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    cloud = start_cloud_process(str(tmp_path_factory.mktemp("sg")), config={"boot_delay": 0.2})
    yield cloud
    cloud.stop()


def eventually(fn, what, timeout=60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported if it never succeeds
            last = e
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def get(address, source, port=PORT):
    """The page at address:port, asked from the loopback address ``source``; an OSError (reset,
    connection closed without answer) when the VM does not let the source in."""
    conn = http.client.HTTPConnection(address, port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode().strip()
    finally:
        conn.close()


def shut_out(address, source):
    try:
        get(address, source)
    except (ConnectionError, http.client.HTTPException, OSError):
        return True
    return False


def serve(port, text):
    return textwrap.dedent(f"""\
        #!/bin/sh
        mkdir -p /srv/www && echo {text} > /srv/www/index.html
        cd /srv/www && nohup python3 -m http.server {port} --bind 0.0.0.0 >/dev/null 2>&1 &
        """)


def boot(conn, name, user_data, groups):
    s = conn.compute.create_server(
        name=name, flavor_id=conn.compute.find_flavor("m1.small").id, networks="auto",
        image_id=conn.image.find_image("ubuntu-24.04").id, security_groups=[{"name": g} for g in groups],
        user_data=base64.b64encode(user_data.encode()).decode())
    s = conn.compute.wait_for_server(s, wait=90)
    return s, next(a["addr"] for net in s.addresses.values() for a in net if a["OS-EXT-IPS:type"] == "fixed")


def test_only_allowed_sources_reach_the_vm_on_fixed_and_floating_ip(cloud):
    conn = cloud.connect()
    second = cloud.fixed_prefix.split(".")[1]  # this session's loopback block: no other test uses .253.x
    friend, stranger = f"127.{second}.253.7", f"127.{second}.253.8"
    sg = conn.network.create_security_group(name="web-from-friend")
    conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                            port_range_min=PORT, port_range_max=PORT,
                                            remote_ip_prefix=f"{friend}/32")
    server, fixed = boot(conn, "guarded", serve(PORT, "guarded-page"), ["web-from-friend"])
    try:
        assert eventually(lambda: get(fixed, friend), "the page, from the allowed address") == "guarded-page"
        assert shut_out(fixed, stranger)
        assert shut_out(fixed, "127.0.0.1")  # the host's usual address is no friend either

        port = next(conn.network.ports(device_id=server.id))
        fip = conn.network.create_ip(floating_network_id=conn.network.find_network("public").id, port_id=port.id)
        floating = fip.floating_ip_address
        assert eventually(lambda: get(floating, friend), "the page through the floating IP") == "guarded-page"
        assert shut_out(floating, stranger)

        # a new rule lets the stranger in at once, on both addresses, without a reboot
        rule = conn.network.create_security_group_rule(
            security_group_id=sg.id, direction="ingress", protocol="tcp", port_range_min=8000,
            port_range_max=8999, remote_ip_prefix=f"127.{second}.253.0/28")
        assert eventually(lambda: get(fixed, stranger), "the stranger let in") == "guarded-page"
        assert get(floating, stranger) == "guarded-page"
        # and its removal shuts it out again
        conn.network.delete_security_group_rule(rule)
        assert eventually(lambda: shut_out(fixed, stranger), "the stranger shut out again")
        assert shut_out(floating, stranger)
        assert get(fixed, friend) == "guarded-page"
        conn.network.delete_ip(fip)
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=60)
    conn.network.delete_security_group(sg)


def test_another_vm_is_a_stranger_until_a_group_rule_lets_it_in(cloud):
    """VMs connect from their own fixed IP; a rule with a remote group lets the group's members in."""
    conn = cloud.connect()
    sg = conn.network.create_security_group(name="web-group")
    peers = conn.network.create_security_group(name="peers")
    target, fixed = boot(conn, "target", serve(PORT, "group-page"), ["web-group"])
    probe = textwrap.dedent(f"""\
        #!/bin/sh
        nohup python3 -c '
        import time, urllib.request
        while True:
            try:
                r = urllib.request.urlopen("http://{fixed}:{PORT}/", timeout=3).read().decode().strip()
            except Exception as e:
                r = "shut-out"
            open("/tmp/probe.tmp", "w").write(r)
            __import__("os").replace("/tmp/probe.tmp", "/tmp/probe")
            time.sleep(0.3)
        ' >/dev/null 2>&1 &
        """)
    other, other_fixed = boot(conn, "prober", probe, ["peers"])
    result = os.path.join(cloud.state_dir, "vms", other.id, "tmp", "probe")

    def probe_says(what):
        with open(result) as f:
            return f.read() == what
    try:
        assert eventually(lambda: probe_says("shut-out"), "the other VM shut out")
        conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                                remote_group_id=peers.id)
        assert eventually(lambda: probe_says("group-page"), "the other VM let in by its group")
        # the other VM's source address is its own fixed IP, not the host's
        second = cloud.fixed_prefix.split(".")[1]
        assert shut_out(fixed, f"127.{second}.253.9")
        assert get(fixed, other_fixed) == "group-page"
    finally:
        for s in (target, other):
            conn.compute.delete_server(s)
        for s in (target, other):
            conn.compute.wait_for_delete(s, wait=60)
    conn.network.delete_security_group(sg)
    conn.network.delete_security_group(peers)


def test_add_and_remove_security_group_on_a_running_server(cloud):
    """``openstack server add/remove security group`` change what a running VM lets in."""
    conn = cloud.connect()
    second = cloud.fixed_prefix.split(".")[1]
    visitor = f"127.{second}.253.10"
    sg = conn.network.create_security_group(name="visitors")
    conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                            port_range_min=PORT, port_range_max=PORT,
                                            remote_ip_prefix=f"{visitor}/32")
    server, fixed = boot(conn, "regrouped", serve(PORT, "regrouped-page"), ["default"])
    try:
        # a VM always lets itself in: the page is served
        assert eventually(lambda: get(fixed, fixed), "the page, from the VM's own address") == "regrouped-page"
        assert shut_out(fixed, visitor)
        cloud.cli("server", "add", "security", "group", "regrouped", "visitors", json_output=False)
        assert eventually(lambda: get(fixed, visitor), "the visitor let in") == "regrouped-page"
        assert {"name": "visitors"} in conn.compute.get_server(server.id).security_groups
        conn.compute.remove_security_group_from_server(server, sg)
        assert shut_out(fixed, visitor)
        assert get(fixed, fixed) == "regrouped-page"
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=60)
    conn.network.delete_security_group(sg)


def test_a_vms_root_cannot_make_the_cloud_write_into_the_host(cloud, tmp_path):
    """The VM's root owns its /etc: a symlink planted where the allow-list goes must not lead the cloud's
    (host root) writes out of the VM."""
    conn = cloud.connect()
    victim = tmp_path / "host-dir"
    victim.mkdir()
    sg = conn.network.create_security_group(name="planted")
    plant = f"#!/bin/sh\nrm -rf /etc/jhub-broker && ln -s {victim} /etc/jhub-broker\n"
    server, _ = boot(conn, "planter", plant, ["planted"])
    try:
        link = os.path.join(cloud.state_dir, "vms", server.id, "etc", "jhub-broker")
        assert eventually(lambda: os.path.islink(link), "the VM's symlink")
        conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                                remote_ip_prefix="127.0.0.1/32")  # the cloud rewrites the list
        conn.network.get_security_group(sg.id)
        assert list(victim.iterdir()) == []
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=60)
    conn.network.delete_security_group(sg)
