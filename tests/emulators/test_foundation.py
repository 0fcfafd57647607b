"""The foundation journeys: what a user of the local cloud does with the real
``openstack`` CLI (through clouds.yaml) and the real openstacksdk.

- build a network, security group, keypair and volume, boot a server whose
  shell user_data serves a file over HTTP, reach it on its fixed IP and a
  floating IP, read its console log, delete everything, see usage back;
- hit the instance quota and read Nova's error, CLI and SDK;
- a cloud-config server running jupyterhub-singleuser as an unprivileged user;
- fault controls (config file and ``/_emulator/*``) seen through openstacksdk.
"""
import base64
import http.client
import json
import os
import shutil
import socket
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openstack.exceptions
import pytest

from tests.fixtures.cloud import start_cloud_process

VMS_RUN = shutil.which("bwrap") is not None and os.geteuid() == 0
needs_vms = pytest.mark.skipif(not VMS_RUN, reason="executing VMs need bubblewrap, run as root")
SINGLEUSER = "/opt/jhub-broker/singleuser/bin/jupyterhub-singleuser"


def eventually(fn, timeout, what):
    """fn() until it returns something truthy; fail with what and fn's last error."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported below if it never succeeds
            last = e
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last error: {last!r}")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.headers, resp.read().decode()


def refused(address, port):
    with socket.socket() as s:
        s.settimeout(3)
        return s.connect_ex((address, port)) != 0


def raw(cloud, method, path, headers=None):
    req = urllib.request.Request(cloud.base_url + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def absolute_limits(cloud):
    """``openstack limits show --absolute`` as {name: value} (compute and volume)."""
    return {r["Name"]: r["Value"] for r in cloud.cli("limits", "show", "--absolute")}


# -- the main journey: CLI builds, VM serves, everything is deleted -------------------------

@needs_vms
def test_cli_journey_server_serves_http_on_fixed_and_floating_ip(local_cloud, tmp_path):
    c = local_cloud
    tag = uuid.uuid4().hex[:6]
    key, sg, net, sub, vol, srv = (f"fj-{x}-{tag}" for x in ("key", "sg", "net", "sub", "vol", "srv"))
    port = 8080
    before = absolute_limits(c)

    c.cli("keypair", "create", key, json_output=False)
    assert c.cli("keypair", "show", key)["fingerprint"]

    c.cli("security", "group", "create", sg)
    c.cli("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", str(port),
          "--remote-ip", "127.0.0.0/8", sg)
    c.cli("security", "group", "rule", "create", "--protocol", "icmp", sg)
    rules = c.cli("security", "group", "rule", "list", sg)
    assert any(r["IP Protocol"] == "tcp" and r["Port Range"] == f"{port}:{port}" for r in rules)
    assert any(r["IP Protocol"] == "icmp" for r in rules)

    c.cli("network", "create", net)
    # in this session's loopback block (the VM listens on its address): concurrent sessions must not collide
    net_prefix = f"127.{c.fixed_prefix.split('.')[1]}.252."
    subnet = c.cli("subnet", "create", "--network", net, "--subnet-range", net_prefix + "0/24", sub)
    assert subnet["gateway_ip"] == net_prefix + "1"
    c.cli("router", "add", "subnet", "router1", sub, json_output=False)
    assert subnet["id"] in [i["subnet_id"] for i in c.cli("router", "show", "router1")["interfaces_info"]]

    volume = c.cli("volume", "create", "--size", "1", vol)
    eventually(lambda: c.cli("volume", "show", vol)["status"] == "available", 30, "volume available")

    # the VM writes a page onto its volume and serves it; the console shows what it echoed
    user_data = tmp_path / "user-data.sh"
    user_data.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        set -e
        www=/mnt/volumes/{volume['id']}
        echo "hello from {srv}" > "$www/index.html"
        cd "$www"
        nohup python3 -m http.server {port} --bind 0.0.0.0 >/dev/null 2>&1 &
        echo "user-data says: serving $www on port {port}"
        """))
    server = c.cli("server", "create", "--image", "ubuntu-24.04", "--flavor", "m1.small", "--network", net,
                   "--security-group", sg, "--key-name", key, "--user-data", str(user_data),
                   "--block-device", f"uuid={volume['id']},source_type=volume,destination_type=volume,"
                                     "boot_index=-1,delete_on_termination=false",
                   "--wait", srv)
    assert server["status"] == "ACTIVE", server.get("fault")
    server_id = server["id"]
    shown = c.cli("server", "show", srv)
    assert shown["key_name"] == key and sg in json.dumps(shown["security_groups"])
    fixed_ip = shown["addresses"][net][0]
    assert fixed_ip.startswith(net_prefix)
    assert c.cli("volume", "show", vol)["status"] == "in-use"

    status, _, body = eventually(lambda: http_get(f"http://{fixed_ip}:{port}/"), 90,
                                 f"HTTP on the fixed IP {fixed_ip}")
    assert status == 200 and body.strip() == f"hello from {srv}"

    fip = c.cli("floating", "ip", "create", "public")["floating_ip_address"]
    c.cli("server", "add", "floating", "ip", srv, fip, json_output=False)
    assert fip in json.dumps(c.cli("server", "show", srv)["addresses"])
    status, _, body = eventually(lambda: http_get(f"http://{fip}:{port}/"), 60, f"HTTP on the floating IP {fip}")
    assert status == 200 and body.strip() == f"hello from {srv}"

    console = c.cli("console", "log", "show", srv, json_output=False)
    assert console.returncode == 0
    assert f"user-data says: serving /mnt/volumes/{volume['id']} on port {port}" in console.stdout

    during = absolute_limits(c)
    assert during["total_instances_used"] == before["total_instances_used"] + 1
    assert during["total_ram_used"] == before["total_ram_used"] + 2048

    # delete everything, in the order a user must
    c.cli("server", "delete", "--wait", srv, json_output=False)
    assert srv not in [s["Name"] for s in c.cli("server", "list")]
    assert refused(fixed_ip, port), "the deleted VM still answers on its fixed IP"
    assert refused(fip, port), "the deleted VM still answers on its floating IP"
    assert c.cli("volume", "show", vol)["status"] == "available"
    c.cli("floating", "ip", "delete", fip, json_output=False)
    c.cli("volume", "delete", vol, json_output=False)
    eventually(lambda: vol not in [v["Name"] for v in c.cli("volume", "list")], 30, "volume deleted")
    c.cli("router", "remove", "subnet", "router1", sub, json_output=False)
    c.cli("subnet", "delete", sub, json_output=False)
    c.cli("network", "delete", net, json_output=False)
    c.cli("security", "group", "delete", sg, json_output=False)
    c.cli("keypair", "delete", key, json_output=False)
    assert key not in [k["Name"] for k in c.cli("keypair", "list")]

    after = absolute_limits(c)
    for name in ("total_instances_used", "total_cores_used", "total_ram_used", "total_volumes_used",
                 "total_gigabytes_used"):
        assert after[name] == before[name], name


# -- quotas ------------------------------------------------------------------------------

def test_instance_quota_real_error_cli_and_sdk_then_freed(make_cloud):
    cloud = make_cloud({"quotas": {"instances": 1}, "vm": {"enabled": False}, "boot_delay": 0.2,
                        "delete_delay": 0.1})
    conn = cloud.connect()
    first = cloud.cli("server", "create", "--image", "ubuntu-24.04", "--flavor", "m1.small",
                      "--network", "private", "--wait", "quota-1")
    assert first["status"] == "ACTIVE"
    limits = absolute_limits(cloud)
    assert (limits["max_total_instances"], limits["total_instances_used"]) == (1, 1)

    nova_says = "Quota exceeded for instances: Requested 1, but already used 1 of 1 instances"
    res = cloud.cli("server", "create", "--image", "ubuntu-24.04", "--flavor", "m1.small",
                    "--network", "private", "quota-2", check=False)
    assert res.returncode != 0
    assert nova_says in res.stderr and "403" in res.stderr

    with pytest.raises(openstack.exceptions.ForbiddenException) as e:
        conn.compute.create_server(name="quota-3", flavor_id=conn.compute.find_flavor("m1.small").id,
                                   image_id=conn.image.find_image("ubuntu-24.04").id, networks="auto")
    assert e.value.status_code == 403 and nova_says in str(e.value)
    assert [s["Name"] for s in cloud.cli("server", "list")] == ["quota-1"]

    usage = cloud.cli("quota", "show", "--usage")
    instances = next(r for r in usage if r["Resource"] == "instances")
    assert (instances["Limit"], instances["In Use"]) == (1, 1)

    cloud.cli("server", "delete", "--wait", "quota-1", json_output=False)
    assert absolute_limits(cloud)["total_instances_used"] == 0
    instances = next(r for r in cloud.cli("quota", "show", "--usage") if r["Resource"] == "instances")
    assert instances["In Use"] == 0
    # freed for real: the next server fits again
    again = conn.compute.create_server(name="quota-4", flavor_id=conn.compute.find_flavor("m1.small").id,
                                       image_id=conn.image.find_image("ubuntu-24.04").id, networks="auto")
    assert conn.compute.wait_for_server(again, wait=30).status == "ACTIVE"


# -- jupyterhub-singleuser in a VM ---------------------------------------------------------

class _HubAPI(BaseHTTPRequestHandler):
    """The least of a Hub a single-user server needs at start: GET /hub/api answers."""

    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Authorization", "")))
        body = json.dumps({"version": "6.1.1"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-JupyterHub-Version", "6.1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # activity reports
        self.server.seen.append((self.path, self.headers.get("Authorization", "")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_api():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _HubAPI)
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _uids_of_processes_with(marker):
    """Real uids of host processes whose environment contains marker (the VM's processes are host ones)."""
    uids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"jupyterhub-singleuser" not in f.read():
                    continue
            with open(f"/proc/{pid}/status") as f:
                uids += [int(line.split()[1]) for line in f if line.startswith("Uid:")]
        except OSError:
            continue
    return uids


@needs_vms
@pytest.mark.skipif(not os.path.exists(SINGLEUSER), reason="run scripts/bake-image.sh first")
def test_sdk_server_runs_jupyterhub_singleuser_as_unprivileged_user(local_cloud, hub_api):
    conn = local_cloud.connect()
    token = "tok-" + uuid.uuid4().hex
    hub_url = f"http://127.0.0.1:{hub_api.server_address[1]}/hub/api"
    env = {"JUPYTERHUB_API_TOKEN": token, "JUPYTERHUB_API_URL": hub_url, "JUPYTERHUB_USER": "x",
           "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-x", "JUPYTERHUB_BASE_URL": "/",
           "JUPYTERHUB_SERVICE_PREFIX": "/user/x/", "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/x/"}
    env_lines = "\n".join(f"        {k}={v}" for k, v in env.items())
    user_data = textwrap.dedent("""\
        #cloud-config
        users:
          - name: jovyan
            shell: /bin/bash
        write_files:
          - path: /etc/jupyterhub-singleuser.env
            permissions: '0640'
            content: |
        {env}
        runcmd:
          - chgrp jovyan /etc/jupyterhub-singleuser.env
          - [runuser, -u, jovyan, --, sh, -c, 'cd ~ && set -a && . /etc/jupyterhub-singleuser.env && nohup {su} > /tmp/singleuser.log 2>&1 &']
          - echo singleuser-started-as-$(id -u jovyan)
        """).format(env=env_lines, su=SINGLEUSER)
    image = conn.image.find_image("ubuntu-24.04-jupyter", ignore_missing=False)
    assert image.properties["jhub_broker_prebaked"] == "true"
    # as the spawner does: the notebook port open to the hub's address only (groups are enforced)
    sg = conn.network.create_security_group(name="hub-only-" + token[-6:])
    conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                            port_range_min=8888, port_range_max=8888,
                                            remote_ip_prefix="127.0.0.1/32")
    server = conn.compute.create_server(name="singleuser-" + token[-6:], image_id=image.id,
                                        flavor_id=conn.compute.find_flavor("m1.small").id,
                                        networks=[{"uuid": conn.network.find_network("private").id}],
                                        user_data=base64.b64encode(user_data.encode()).decode(),
                                        metadata={"jupyterhub-user": "x"}, security_groups=[{"name": sg.name}])
    try:
        server = conn.compute.wait_for_server(server, wait=60)
        fixed_ip = server.addresses["private"][0]["addr"]
        url = f"http://{fixed_ip}:8888/user/x/api"
        status, headers, body = eventually(lambda: http_get(url), 150,
                                           f"jupyterhub-singleuser at {url}; console:\n"
                                           + conn.compute.get_server_console_output(server)["output"][-3000:])
        assert status == 200 and "version" in json.loads(body)
        # from any other address the notebook port is shut
        stranger = f"127.{local_cloud.fixed_prefix.split('.')[1]}.253.11"
        with pytest.raises(OSError):
            conn_ = http.client.HTTPConnection(fixed_ip, 8888, timeout=10, source_address=(stranger, 0))
            conn_.request("GET", "/user/x/api")
            conn_.getresponse().read()
        # it found its Hub at the JUPYTERHUB_API_URL given in user_data (the start-up version check)
        assert "/hub/api" in [p for p, _ in hub_api.seen]
        uids = _uids_of_processes_with(token)
        assert uids and 0 not in uids, f"singleuser uids {uids}"
        assert "singleuser-started-as-" in conn.compute.get_server_console_output(server)["output"]
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=60)
        conn.network.delete_security_group(sg)
    assert refused(fixed_ip, 8888)
    assert _uids_of_processes_with(token) == []


# -- fault controls --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faulty_cloud(tmp_path_factory):
    """A private cloud whose config file already carries a fault and a boot failure."""
    config = {"vm": {"enabled": False}, "boot_delay": 0.2, "delete_delay": 0.1,
              "faults": [{"path": r"/volume/v3/[^/]+/types", "method": "GET", "status": 503, "count": 1}],
              "boot_failures": [{"name": "^doomed-", "message": "No valid host was found. There are not enough "
                                                               "hosts available."}]}
    cloud = start_cloud_process(str(tmp_path_factory.mktemp("faulty")), config=config)
    yield cloud
    cloud.stop()


@pytest.fixture
def fconn(faulty_cloud):
    faulty_cloud.admin("DELETE", "/_emulator/faults")
    conn = faulty_cloud.connect()
    conn.authorize()  # the token is in hand before any rule is added
    yield conn
    faulty_cloud.admin("DELETE", "/_emulator/faults")


def fired(cloud):
    return [r["fired"] for r in cloud.admin("GET", "/_emulator/faults")["faults"]]


def test_fault_from_config_file(faulty_cloud):
    # the fixture clears the admin-set rules, so use a fresh connection without it
    conn = faulty_cloud.connect()
    with pytest.raises(openstack.exceptions.HttpException) as e:
        list(conn.block_storage.types())
    assert e.value.status_code == 503
    assert [t.name for t in conn.block_storage.types()]  # count 1: the next call goes through


def test_fault_503_on_list_servers(faulty_cloud, fconn):
    faulty_cloud.admin("POST", "/_emulator/faults", {"path": "/servers", "method": "GET", "status": 503, "count": 1})
    with pytest.raises(openstack.exceptions.HttpException) as e:
        list(fconn.compute.servers())
    assert e.value.status_code == 503
    assert "The server is currently unavailable" in str(e.value)
    assert fired(faulty_cloud) == [1]  # openstacksdk did not retry on its own
    assert list(fconn.compute.servers()) == []


def test_fault_503_retried_by_keystoneauth_when_asked(faulty_cloud):
    conn = faulty_cloud.connect(status_code_retries=2)
    conn.authorize()
    faulty_cloud.admin("DELETE", "/_emulator/faults")
    try:
        faulty_cloud.admin("POST", "/_emulator/faults",
                           {"path": "/servers", "method": "GET", "status": 503, "count": 2})
        assert list(conn.compute.servers()) == []
        assert fired(faulty_cloud) == [2]
    finally:
        faulty_cloud.admin("DELETE", "/_emulator/faults")


def test_fault_429_with_retry_after(faulty_cloud, fconn):
    faulty_cloud.admin("POST", "/_emulator/faults",
                       {"path": "/flavors", "method": "GET", "status": 429, "retry_after": 7, "count": 1})
    with pytest.raises(openstack.exceptions.HttpException) as e:
        list(fconn.compute.flavors())
    assert e.value.status_code == 429
    assert e.value.response.headers["Retry-After"] == "7"
    assert e.value.response.json()["overLimit"]["retryAfter"] == "7"
    assert "m1.small" in [f.name for f in fconn.compute.flavors()]


def test_fault_500_error_rate_with_count(faulty_cloud, fconn):
    faulty_cloud.admin("POST", "/_emulator/faults",
                       {"path": "/networks", "method": "GET", "status": 500, "rate": 1.0, "count": 2})
    for _ in range(2):
        with pytest.raises(openstack.exceptions.HttpException) as e:
            list(fconn.network.networks())
        assert e.value.status_code == 500
    assert "public" in [n.name for n in fconn.network.networks()]
    assert fired(faulty_cloud) == [2]


def test_fault_latency_per_route(faulty_cloud, fconn):
    faulty_cloud.admin("POST", "/_emulator/faults", {"path": "/images", "method": "GET", "latency": 0.3})
    assert "ubuntu-24.04" in [i.name for i in fconn.image.images()]
    assert "ubuntu-24.04" in [i.name for i in fconn.image.images()]
    assert fired(faulty_cloud) == [2]
    list(fconn.compute.flavors())  # another route: not delayed, not counted
    assert fired(faulty_cloud) == [2]


def test_slow_boot_then_active(faulty_cloud, fconn):
    old = faulty_cloud.admin("GET", "/_emulator/boot")["boot_delay"]
    faulty_cloud.admin("PUT", "/_emulator/boot", {"boot_delay": 6})
    try:
        s = fconn.compute.create_server(name="slow-1", flavor_id=fconn.compute.find_flavor("m1.small").id,
                                        image_id=fconn.image.find_image("ubuntu-24.04").id, networks="auto")
        building = fconn.compute.get_server(s.id)
        assert (building.status, building.task_state) == ("BUILD", "spawning")
        assert fconn.compute.wait_for_server(s, wait=60).status == "ACTIVE"
    finally:
        faulty_cloud.admin("PUT", "/_emulator/boot", {"boot_delay": old})
    fconn.compute.delete_server(s)
    fconn.compute.wait_for_delete(s, wait=30)


def test_boot_failure_fault_visible_in_cli(faulty_cloud):
    res = faulty_cloud.cli("server", "create", "--image", "ubuntu-24.04", "--flavor", "m1.small",
                           "--network", "private", "--wait", "doomed-1", check=False, json_output=False)
    assert res.returncode != 0 and "Error creating server" in res.stderr
    shown = faulty_cloud.cli("server", "show", "doomed-1")
    assert shown["status"] == "ERROR"
    assert "No valid host was found. There are not enough hosts available." in json.dumps(shown["fault"])
    faulty_cloud.cli("server", "delete", "--wait", "doomed-1", json_output=False)


def test_admin_endpoint_needs_admin(faulty_cloud):
    member = faulty_cloud.connect("local")
    admin = faulty_cloud.connect("local-admin")
    st, body = raw(faulty_cloud, "GET", "/_emulator/faults")
    assert st == 401 and body["error"]["code"] == 401
    st, body = raw(faulty_cloud, "GET", "/_emulator/faults", {"X-Auth-Token": member.auth_token})
    assert st == 403 and "admin role" in body["error"]["message"]
    st, body = raw(faulty_cloud, "GET", "/_emulator/faults", {"X-Emulator-Admin": "wrong-secret"})
    assert st == 401
    st, body = raw(faulty_cloud, "GET", "/_emulator/faults", {"X-Auth-Token": admin.auth_token})
    assert st == 200 and "faults" in body


# -- the demo's cloud -------------------------------------------------------------------------

def test_demo_cloud_prints_a_cli_command_that_works(tmp_path):
    import io
    import subprocess

    from jhub_broker.demo.cloud import print_cli_help, start_demo_cloud, stop_demo_cloud

    proc, clouds_yaml, base_url = start_demo_cloud(str(tmp_path / "demo"), config=None)
    try:
        out = io.StringIO()
        print_cli_help(clouds_yaml, base_url, file=out)
        one_liner = next(line.strip() for line in out.getvalue().splitlines()
                         if line.strip().startswith("OS_CLIENT_CONFIG_FILE="))
        assert one_liner.endswith("openstack --os-cloud local server list")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        res = subprocess.run(one_liner.replace("server list", "image list -f value -c Name"), shell=True,
                             env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "ubuntu-24.04-jupyter" in res.stdout.split()
    finally:
        assert stop_demo_cloud(proc) == 0
    with pytest.raises((urllib.error.URLError, OSError)):
        http_get(base_url + "/identity/v3", timeout=3)
