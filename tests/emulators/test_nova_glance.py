"""Nova and Glance of the local cloud, driven by the real openstacksdk and ``openstack`` CLI."""
import base64
import importlib.util
import json
import time
import urllib.error
import urllib.request
import uuid

import openstack
import pytest

HAVE_CINDER = importlib.util.find_spec("jhub_broker.emulators.openstack.cinder") is not None
HAVE_NEUTRON = importlib.util.find_spec("jhub_broker.emulators.openstack.neutron") is not None
NO_VMS = {"vm": {"enabled": False}, "boot_delay": 0.2, "delete_delay": 0.1}


def http(cloud, method, path, body=None, token=None, headers=None):
    """A raw request: (status, headers, parsed body or text)."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    h = {"Content-Type": "application/json"}
    if token:
        h["X-Auth-Token"] = token
    h.update(headers or {})
    req = urllib.request.Request(cloud.base_url + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, hdrs, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    try:
        return status, hdrs, json.loads(raw) if raw else None
    except ValueError:
        return status, hdrs, raw.decode()


@pytest.fixture(scope="module")
def conn(local_cloud):
    return local_cloud.connect()


@pytest.fixture(scope="module")
def token(conn):
    return conn.auth_token


def wait_status(conn, server_id, want, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        s = conn.compute.get_server(server_id)
        if s.status in want:
            return s
        assert time.monotonic() < deadline, f"server stuck in {s.status}"
        time.sleep(0.2)


# -- discovery, microversions, errors ---------------------------------------

def test_compute_discovery_and_microversions(local_cloud, token):
    st, _, body = http(local_cloud, "GET", "/compute/")
    assert st == 200 and [v["id"] for v in body["versions"]] == ["v2.0", "v2.1"]
    st, _, body = http(local_cloud, "GET", "/compute/v2.1/")
    assert st == 200 and body["version"]["version"] == "2.96" and body["version"]["min_version"] == "2.1"

    st, hdrs, _ = http(local_cloud, "GET", "/compute/v2.1/flavors", token=token,
                       headers={"OpenStack-API-Version": "compute 2.60"})
    assert st == 200
    assert hdrs["OpenStack-API-Version"] == "compute 2.60" and hdrs["X-OpenStack-Nova-API-Version"] == "2.60"
    assert "OpenStack-API-Version" in hdrs["Vary"]
    st, hdrs, _ = http(local_cloud, "GET", "/compute/v2.1/flavors", token=token,
                       headers={"X-OpenStack-Nova-API-Version": "latest"})
    assert hdrs["X-OpenStack-Nova-API-Version"] == "2.96"
    st, hdrs, _ = http(local_cloud, "GET", "/compute/v2.1/flavors", token=token)
    assert hdrs["X-OpenStack-Nova-API-Version"] == "2.1"
    st, _, body = http(local_cloud, "GET", "/compute/v2.1/flavors", token=token,
                       headers={"OpenStack-API-Version": "compute 2.97"})
    assert st == 406 and "maximum is 2.96" in body["computeFault"]["message"]


def test_unknown_routes_and_bad_requests(local_cloud, token):
    for path in ("/compute/v2.1/nope", "/compute/v2.1/servers/x/nope", "/image/v2/nope"):
        st, _, body = http(local_cloud, "GET", path, token=token)
        assert st == 404, path
    st, _, body = http(local_cloud, "GET", "/compute/v2.1/servers/" + str(uuid.uuid4()), token=token)
    assert st == 404 and body["itemNotFound"]["message"].endswith("could not be found.")
    st, _, body = http(local_cloud, "POST", "/compute/v2.1/servers", body=b"{not json", token=token)
    assert st == 400 and "badRequest" in body
    st, _, body = http(local_cloud, "GET", "/compute/v2.1/servers", token="nope")
    assert st == 401
    # tags routes only exist from 2.26 on
    st, _, _ = http(local_cloud, "GET", f"/compute/v2.1/servers/{uuid.uuid4()}/tags", token=token)
    assert st == 404
    st, _, body = http(local_cloud, "GET", "/image/v2/images/" + str(uuid.uuid4()), token=token)
    assert st == 404 and "No image found with ID" in body
    assert local_cloud.connect().compute.get("/no-such-thing").status_code == 404


# -- flavors ------------------------------------------------------------------

def test_flavors_cli_and_sdk(local_cloud, conn, token):
    rows = local_cloud.cli("flavor", "list")
    assert {r["Name"] for r in rows} >= {"m1.tiny", "m1.small", "m1.medium", "m1.large"}
    small = local_cloud.cli("flavor", "show", "m1.small")
    assert (small["vcpus"], small["ram"], small["disk"]) == (1, 2048, 20)
    f = conn.compute.find_flavor("m1.medium", ignore_missing=False)
    assert (f.vcpus, f.ram, f.disk) == (2, 4096, 40)
    assert {fl.name for fl in conn.compute.flavors(min_ram=4096)} == {"m1.medium", "m1.large"}
    st, _, body = http(local_cloud, "GET", f"/compute/v2.1/flavors/{f.id}/os-extra_specs", token=token)
    assert st == 200 and body == {"extra_specs": {}}
    st, _, body = http(local_cloud, "GET", "/compute/v2.1/flavors/nope", token=token)
    assert st == 404 and body["itemNotFound"]["message"] == "Flavor nope could not be found."


# -- images -------------------------------------------------------------------

def test_images_cli_and_sdk(local_cloud, conn):
    names = {r["Name"] for r in local_cloud.cli("image", "list")}
    assert {"ubuntu-24.04-jupyter", "ubuntu-24.04", "big-gpu-image"} <= names
    shown = local_cloud.cli("image", "show", "ubuntu-24.04-jupyter")
    assert shown["min_disk"] == 10 and shown["min_ram"] == 1024
    assert shown["properties"]["jhub_broker_prebaked"] == "true"
    im = conn.image.find_image("big-gpu-image", ignore_missing=False)
    assert (im.min_disk, im.min_ram, im.status) == (60, 8192, "active")
    assert im.os_distro == "ubuntu" and im.properties["jhub_broker_prebaked"] == "true"
    # paging through `next` links (the SDK follows them)
    assert {i.name for i in conn.image.images(limit=1)} >= {"ubuntu-24.04", "big-gpu-image"}
    assert [i.name for i in conn.image.images(name="ubuntu-24.04")] == ["ubuntu-24.04"]
    st, _, body = http(local_cloud, "GET", "/image/")
    assert st == 300 and body["versions"][0]["status"] == "CURRENT"
    st, _, body = http(local_cloud, "GET", "/image/v2/schemas/image", token=conn.auth_token)
    assert st == 200 and "min_disk" in body["properties"]


def test_image_create_update_delete_cli(local_cloud, tmp_path):
    f = tmp_path / "disk.raw"
    f.write_bytes(b"\0" * 4096)
    name = "img-" + uuid.uuid4().hex[:6]
    created = local_cloud.cli("image", "create", "--file", str(f), "--disk-format", "raw",
                              "--container-format", "bare", "--min-disk", "2", "--property", "foo=bar", name)
    assert created["status"] == "active" and created["size"] == 4096
    local_cloud.cli("image", "set", "--property", "color=blue", "--min-ram", "256", name, json_output=False)
    shown = local_cloud.cli("image", "show", name)
    assert shown["min_ram"] == 256 and shown["properties"]["color"] == "blue"
    local_cloud.cli("image", "delete", name, json_output=False)
    res = local_cloud.cli("image", "show", name, check=False, json_output=False)
    assert res.returncode != 0


# -- keypairs -----------------------------------------------------------------

def test_keypairs_cli_and_sdk(local_cloud, conn):
    name = "kp-" + uuid.uuid4().hex[:6]
    res = local_cloud.cli("keypair", "create", name, json_output=False)
    assert "PRIVATE KEY" in res.stdout
    assert name in {r["Name"] for r in local_cloud.cli("keypair", "list")}
    shown = local_cloud.cli("keypair", "show", name)
    assert shown["fingerprint"].count(":") == 15
    local_cloud.cli("keypair", "delete", name, json_output=False)
    assert name not in {r["Name"] for r in local_cloud.cli("keypair", "list")}

    # the SDK negotiates 2.10 for keypairs: Nova still generates the key
    kp = conn.compute.create_keypair(name=name + "-gen")
    assert kp.private_key.startswith("-----BEGIN") and kp.public_key.startswith("ssh-rsa ")
    pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2ybw+ZnsD0NRSgNhdIpt8N5Jq4cEIHxGwChq4mQuqG test"
    kp2 = conn.compute.create_keypair(name=name + "-pub", public_key=pub)
    assert kp2.private_key is None and kp2.public_key == pub
    with pytest.raises(openstack.exceptions.ConflictException):
        conn.compute.create_keypair(name=name + "-pub", public_key=pub)
    assert conn.compute.get_keypair(name + "-pub").fingerprint == kp2.fingerprint
    for n in (name + "-gen", name + "-pub"):
        conn.compute.delete_keypair(n, ignore_missing=False)
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.compute.get_keypair(name + "-pub")


# -- servers ------------------------------------------------------------------

def test_server_lifecycle_cli_and_sdk(local_cloud, conn, tmp_path):
    ud = tmp_path / "user-data.sh"
    ud.write_text("#!/bin/sh\necho hello-from-user-data\n")
    key = "srvkey-" + uuid.uuid4().hex[:6]
    local_cloud.cli("keypair", "create", key, json_output=False)
    name = "nbsrv-" + uuid.uuid4().hex[:6]
    before = conn.compute.get_limits().absolute
    srv = local_cloud.cli("server", "create", "--image", "ubuntu-24.04", "--flavor", "m1.small",
                          "--user-data", str(ud), "--property", "owner=alice", "--tag", "jhub", "--tag", name,
                          "--key-name", key, "--wait", name)
    assert srv["status"] == "ACTIVE", srv.get("fault")
    assert srv["properties"] == {"owner": "alice"} and set(srv["tags"]) == {"jhub", name}
    assert srv["key_name"] == key
    sid = srv["id"]
    try:
        # addresses the way Nova shows them
        s = conn.compute.get_server(sid)
        (net, addrs), = s.addresses.items()
        assert addrs[0]["OS-EXT-IPS:type"] == "fixed" and addrs[0]["addr"].startswith("127.")
        assert addrs[0]["OS-EXT-IPS-MAC:mac_addr"].startswith("fa:16:3e:")
        assert s.flavor.original_name == "m1.small" and s.flavor.vcpus == 1
        assert s.image.id == conn.image.find_image("ubuntu-24.04").id
        # list filters, CLI and SDK
        assert [r["ID"] for r in local_cloud.cli("server", "list", "--tags", name)] == [sid]
        assert [r["ID"] for r in local_cloud.cli("server", "list", "--name", f"^{name}$")] == [sid]
        assert local_cloud.cli("server", "list", "--tags", "no-such-tag") == []
        assert [x.id for x in conn.compute.servers(tags=name)] == [sid]
        assert [x.id for x in conn.compute.servers(any_tags=f"nope,{name}")] == [sid]
        assert sid not in [x.id for x in conn.compute.servers(not_tags=name)]
        assert [x.id for x in conn.compute.servers(name=name, status="ACTIVE")] == [sid]
        assert sid not in [x.id for x in conn.compute.servers(status="SHUTOFF")]
        # tags and metadata sub-resources
        s.add_tag(conn.compute, "extra")
        assert "extra" in conn.compute.get_server(sid).tags
        conn.compute.set_server_metadata(sid, color="red")
        assert conn.compute.get_server_metadata(sid).metadata == {"owner": "alice", "color": "red"}
        conn.compute.delete_server_metadata(sid, ["color"])
        assert conn.compute.get_server(sid).metadata == {"owner": "alice"}
        # console output
        res = local_cloud.cli("console", "log", "show", "--lines", "5", sid, json_output=False)
        assert res.returncode == 0
        out = conn.compute.get_server_console_output(sid)
        assert "output" in out
        # usage, then delete frees it
        used = conn.compute.get_limits().absolute
        assert used.instances_used == before.instances_used + 1
        assert used.total_cores_used == before.total_cores_used + 1
        assert used.total_ram_used == before.total_ram_used + 2048
    finally:
        local_cloud.cli("server", "delete", "--wait", sid, json_output=False)
        local_cloud.cli("keypair", "delete", key, json_output=False)
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.compute.get_server(sid)
    after = conn.compute.get_limits().absolute
    assert after.instances_used == before.instances_used
    if HAVE_CINDER:
        absolute = {r["Name"]: r["Value"] for r in local_cloud.cli("limits", "show", "--absolute")}
        assert absolute["total_instances_used"] == after.instances_used
        assert absolute["max_total_instances"] == 10 and absolute["total_cores_used"] == after.total_cores_used


def test_server_create_validation(local_cloud, conn):
    small = conn.compute.find_flavor("m1.small")
    tiny = conn.compute.find_flavor("m1.tiny")
    ubuntu = conn.image.find_image("ubuntu-24.04")
    gpu = conn.image.find_image("big-gpu-image")
    with pytest.raises(openstack.exceptions.BadRequestException) as e:
        conn.compute.create_server(name="x", flavor_id=small.id, image_id=gpu.id, networks="auto")
    assert "Flavor's memory is too small for requested image." in str(e.value)
    with pytest.raises(openstack.exceptions.BadRequestException) as e:
        conn.compute.create_server(name="x", flavor_id=tiny.id, image_id=ubuntu.id, networks="auto")
    assert "Flavor's disk is" in str(e.value) and "minimum size" in str(e.value)
    with pytest.raises(openstack.exceptions.BadRequestException) as e:
        conn.compute.create_server(name="x", flavor_id="nope", image_id=ubuntu.id, networks="auto")
    assert "Flavor nope could not be found." in str(e.value)
    bad = str(uuid.uuid4())
    with pytest.raises(openstack.exceptions.BadRequestException) as e:
        conn.compute.create_server(name="x", flavor_id=small.id, image_id=bad, networks="auto")
    assert f"Image {bad} could not be found." in str(e.value)
    with pytest.raises(openstack.exceptions.BadRequestException) as e:
        conn.compute.create_server(name="x", flavor_id=small.id, image_id=ubuntu.id, networks="auto",
                                   key_name="no-such-key")
    assert "Invalid key_name provided." in str(e.value)
    with pytest.raises(openstack.exceptions.BadRequestException) as e:
        conn.compute.create_server(name="x", flavor_id=small.id, image_id=ubuntu.id, networks="auto",
                                   user_data="%%%not base64")
    assert "User data needs to be valid base 64." in str(e.value)
    with pytest.raises(openstack.exceptions.BadRequestException):
        conn.compute.create_server(name="x", flavor_id=small.id, image_id=ubuntu.id)  # networks required


def test_quota_exceeded_and_freed(make_cloud):
    cloud = make_cloud(dict(NO_VMS, quotas={"instances": 2, "cores": 3, "ram": 51200}))
    conn = cloud.connect()
    medium = conn.compute.find_flavor("m1.medium")
    small = conn.compute.find_flavor("m1.small")
    image = conn.image.find_image("ubuntu-24.04")
    a = conn.compute.create_server(name="q-a", flavor_id=medium.id, image_id=image.id, networks="auto")
    with pytest.raises(openstack.exceptions.ForbiddenException) as e:
        conn.compute.create_server(name="q-b", flavor_id=medium.id, image_id=image.id, networks="auto")
    assert "Quota exceeded for cores: Requested 2, but already used 2 of 3 cores" in str(e.value)
    b = conn.compute.create_server(name="q-b", flavor_id=small.id, image_id=image.id, networks="auto")
    with pytest.raises(openstack.exceptions.ForbiddenException) as e:
        conn.compute.create_server(name="q-c", flavor_id=small.id, image_id=image.id, networks="auto")
    assert "Quota exceeded for cores, instances: Requested 1, 1, but already used 3, 2 of 3, 2 cores, " \
           "instances" in str(e.value)
    # the exact body real Nova sends
    st, _, body = http(cloud, "POST", "/compute/v2.1/servers", token=conn.auth_token,
                       headers={"OpenStack-API-Version": "compute 2.96"},
                       body={"server": {"name": "q-d", "flavorRef": small.id, "imageRef": image.id,
                                        "networks": "none"}})
    assert st == 403 and list(body) == ["forbidden"] and body["forbidden"]["code"] == 403
    cloud.admin("PUT", "/_emulator/boot", {"quotas": {"cores": 20}})
    with pytest.raises(openstack.exceptions.ForbiddenException) as e:
        conn.compute.create_server(name="q-c", flavor_id=small.id, image_id=image.id, networks="auto")
    assert "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances" in str(e.value)
    assert e.value.status_code == 403
    for s in (a, b):
        conn.compute.wait_for_server(s, wait=30)
        conn.compute.delete_server(s)
        conn.compute.wait_for_delete(s, wait=30)
    limits = conn.compute.get_limits().absolute
    assert (limits.instances_used, limits.total_cores_used, limits.instances) == (0, 0, 2)
    qs = conn.compute.get_quota_set(conn.current_project_id)
    assert qs.instances == 2
    c = conn.compute.create_server(name="q-e", flavor_id=small.id, image_id=image.id, networks="auto")
    conn.compute.wait_for_server(c, wait=30)


def test_boot_failure_goes_error(local_cloud, conn):
    local_cloud.admin("PUT", "/_emulator/boot", {"boot_failures": [
        {"name": "^doomed-", "message": "No valid host was found. There are not enough hosts available.",
         "count": 1}]})
    try:
        small = conn.compute.find_flavor("m1.small")
        image = conn.image.find_image("ubuntu-24.04")
        s = conn.compute.create_server(name="doomed-1", flavor_id=small.id, image_id=image.id, networks="auto")
        s = wait_status(conn, s.id, {"ERROR", "ACTIVE"})
        assert s.status == "ERROR" and s.vm_state == "error"
        assert s.fault["code"] == 500
        assert s.fault["message"] == "No valid host was found. There are not enough hosts available."
        shown = local_cloud.cli("server", "show", s.id)
        assert shown["status"] == "ERROR" and "No valid host" in json.dumps(shown["fault"])
        assert s.addresses == {}
        conn.compute.delete_server(s)
        conn.compute.wait_for_delete(s, wait=30)
        assert local_cloud.admin("GET", "/_emulator/boot")["boot_failures"] == []  # count used up
    finally:
        local_cloud.admin("PUT", "/_emulator/boot", {"boot_failures": []})


def test_microversion_shapes_and_server_extras(make_cloud):
    cloud = make_cloud(NO_VMS)
    conn = cloud.connect()
    tok = conn.auth_token
    small = conn.compute.find_flavor("m1.small")
    image = conn.image.find_image("ubuntu-24.04")
    ud = base64.b64encode(b"#!/bin/sh\ntrue\n").decode()
    st, hdrs, body = http(cloud, "POST", "/compute/v2.1/servers", token=tok,
                          headers={"OpenStack-API-Version": "compute 2.52"},
                          body={"server": {"name": "mv", "flavorRef": small.id, "imageRef": image.id,
                                           "networks": "auto", "tags": ["a"], "metadata": {"k": "v"},
                                           "user_data": ud, "availability_zone": "nova"}})
    assert st == 202 and hdrs["Location"].endswith(body["server"]["id"]) and body["server"]["adminPass"]
    sid = body["server"]["id"]
    st, _, old = http(cloud, "GET", f"/compute/v2.1/servers/{sid}", token=tok)
    assert set(old["server"]["flavor"]) == {"id", "links"} and "tags" not in old["server"]
    assert old["server"]["status"] == "BUILD" and old["server"]["OS-EXT-STS:task_state"] == "spawning"
    st, _, new = http(cloud, "GET", f"/compute/v2.1/servers/{sid}", token=tok,
                      headers={"OpenStack-API-Version": "compute 2.96"})
    assert new["server"]["flavor"]["original_name"] == "m1.small" and new["server"]["tags"] == ["a"]
    assert new["server"]["OS-EXT-AZ:availability_zone"] == "nova"
    # tags before 2.52 in the create body is a schema error
    st, _, _ = http(cloud, "POST", "/compute/v2.1/servers", token=tok,
                    headers={"OpenStack-API-Version": "compute 2.37"},
                    body={"server": {"name": "mv2", "flavorRef": small.id, "imageRef": image.id,
                                     "networks": "auto", "tags": ["a"]}})
    assert st == 400
    conn.compute.wait_for_server(conn.compute.get_server(sid), wait=30)
    v = {"OpenStack-API-Version": "compute 2.96"}
    st, _, _ = http(cloud, "PUT", f"/compute/v2.1/servers/{sid}/tags/b", token=tok, headers=v)
    assert st == 201
    st, _, _ = http(cloud, "GET", f"/compute/v2.1/servers/{sid}/tags/b", token=tok, headers=v)
    assert st == 204
    st, _, body = http(cloud, "PUT", f"/compute/v2.1/servers/{sid}/tags", token=tok, headers=v,
                       body={"tags": ["x", "y"]})
    assert st == 200 and body == {"tags": ["x", "y"]}
    st, _, _ = http(cloud, "DELETE", f"/compute/v2.1/servers/{sid}/tags/nope", token=tok, headers=v)
    assert st == 404
    st, _, body = http(cloud, "PUT", f"/compute/v2.1/servers/{sid}/metadata/k2", token=tok,
                       body={"meta": {"k2": "v2"}})
    assert st == 200 and body == {"meta": {"k2": "v2"}}
    st, _, body = http(cloud, "GET", f"/compute/v2.1/servers/{sid}/metadata", token=tok)
    assert body == {"metadata": {"k": "v", "k2": "v2"}}
    st, _, body = http(cloud, "GET", f"/compute/v2.1/servers/{sid}/os-interface", token=tok)
    assert st == 200 and len(body["interfaceAttachments"]) == 1
    assert body["interfaceAttachments"][0]["fixed_ips"][0]["ip_address"].startswith(cloud.fixed_prefix)
    st, _, body = http(cloud, "POST", f"/compute/v2.1/servers/{sid}/action", token=tok,
                       body={"os-getConsoleOutput": {"length": 10}})
    assert st == 200 and body == {"output": ""}
    st, _, body = http(cloud, "POST", f"/compute/v2.1/servers/{sid}/action", token=tok, body={"bogus": None})
    assert st == 404
    st, _, body = http(cloud, "PATCH", f"/compute/v2.1/servers/{sid}", token=tok, body={})
    assert st == 405 and "badMethod" in body
    conn.compute.stop_server(sid)
    assert conn.compute.get_server(sid).status == "SHUTOFF"
    conn.compute.start_server(sid)
    assert conn.compute.get_server(sid).status == "ACTIVE"
    st, _, body = http(cloud, "GET", f"/compute/v2.1/os-quota-sets/{conn.current_project_id}/detail", token=tok,
                       headers=v)
    assert body["quota_set"]["instances"] == {"in_use": 1, "limit": 10, "reserved": 0}
    st, _, body = http(cloud, "GET", "/compute/v2.1/os-availability-zone", token=tok)
    assert body["availabilityZoneInfo"][0]["zoneName"] == "nova"
    # paging
    st, _, body = http(cloud, "GET", "/compute/v2.1/servers?limit=1", token=tok)
    assert len(body["servers"]) == 1 and "servers_links" in body
    st, _, body = http(cloud, "GET", "/compute/v2.1/servers?marker=nope", token=tok)
    assert st == 400
    st, _, body = http(cloud, "GET", "/compute/v2.1/servers/detail?bogus=1", token=tok, headers=v)
    assert st == 400
    st, _, body = http(cloud, "GET", "/compute/v2.1/servers/detail?changes-since=2000-01-01T00:00:00Z",
                       token=tok)
    assert [s["id"] for s in body["servers"]] == [sid]


@pytest.mark.skipif(not HAVE_CINDER, reason="cinder emulator not present yet")
def test_volume_attach_and_boot_from_volume(make_cloud):
    cloud = make_cloud(NO_VMS)
    conn = cloud.connect()
    small = conn.compute.find_flavor("m1.small")
    image = conn.image.find_image("ubuntu-24.04")
    vol = conn.block_storage.create_volume(size=1, name="data")
    conn.block_storage.wait_for_status(vol, "available", wait=30)
    s = conn.compute.create_server(name="vols", flavor_id=small.id, image_id=image.id, networks="auto",
                                   block_device_mapping_v2=[
                                       {"boot_index": 0, "uuid": image.id, "source_type": "image",
                                        "destination_type": "local", "delete_on_termination": True},
                                       {"boot_index": -1, "uuid": vol.id, "source_type": "volume",
                                        "destination_type": "volume", "delete_on_termination": False}])
    s = conn.compute.wait_for_server(s, wait=30)
    v = conn.block_storage.get_volume(vol.id)
    assert v.status == "in-use" and v.attachments[0]["server_id"] == s.id
    atts = list(conn.compute.volume_attachments(s))
    assert [a.volume_id for a in atts] == [vol.id]
    conn.compute.delete_volume_attachment(s, vol.id)
    assert conn.block_storage.get_volume(vol.id).status == "available"
    conn.compute.create_volume_attachment(s, volume_id=vol.id)
    assert conn.block_storage.get_volume(vol.id).status == "in-use"
    # boot from volume: Nova makes the root volume from the image
    b = conn.compute.create_server(name="bfv", flavor_id=small.id, networks="auto", block_device_mapping_v2=[
        {"boot_index": 0, "uuid": image.id, "source_type": "image", "destination_type": "volume",
         "volume_size": 8, "delete_on_termination": True}])
    b = conn.compute.wait_for_server(b, wait=30)
    assert not b.image and len(b.attached_volumes) == 1
    for x in (s, b):
        conn.compute.delete_server(x)
        conn.compute.wait_for_delete(x, wait=30)
    assert conn.block_storage.get_volume(vol.id).status == "available"
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.block_storage.get_volume(b.attached_volumes[0]["id"])


@pytest.mark.skipif(not HAVE_NEUTRON, reason="neutron emulator not present yet")
def test_server_ports_and_floating_ips(make_cloud):
    cloud = make_cloud(NO_VMS)
    conn = cloud.connect()
    net = conn.network.find_network("private", ignore_missing=False)
    public = conn.network.find_network("public", ignore_missing=False)
    # --network through the CLI (OSC resolves it with Neutron)
    srv = cloud.cli("server", "create", "--image", "ubuntu-24.04", "--flavor", "m1.small", "--network", "private",
                    "--wait", "netsrv")
    assert srv["status"] == "ACTIVE"
    ports = list(conn.network.ports(device_id=srv["id"]))
    assert len(ports) == 1 and ports[0].device_owner == "compute:nova" and ports[0].network_id == net.id
    fip = conn.network.create_ip(floating_network_id=public.id)
    conn.network.update_ip(fip, port_id=ports[0].id)
    addrs = conn.compute.get_server(srv["id"]).addresses["private"]
    assert {a["OS-EXT-IPS:type"]: a["addr"] for a in addrs} == {
        "fixed": ports[0].fixed_ips[0]["ip_address"], "floating": fip.floating_ip_address}
    # a port the user made: Nova binds it, and only unbinds it on delete
    own = conn.network.create_port(network_id=net.id, name="mine")
    s2 = conn.compute.create_server(name="portsrv", flavor_id=conn.compute.find_flavor("m1.small").id,
                                    image_id=conn.image.find_image("ubuntu-24.04").id, networks=[{"port": own.id}])
    s2 = conn.compute.wait_for_server(s2, wait=30)
    assert conn.network.get_port(own.id).device_id == s2.id
    with pytest.raises(openstack.exceptions.ConflictException):
        conn.compute.create_server(name="again", flavor_id=conn.compute.find_flavor("m1.small").id,
                                   image_id=conn.image.find_image("ubuntu-24.04").id, networks=[{"port": own.id}])
    cloud.cli("server", "delete", "--wait", srv["id"], s2.id, json_output=False)
    assert list(conn.network.ports(device_id=srv["id"])) == []
    assert conn.network.get_port(own.id).device_id == ""
    assert conn.network.get_ip(fip.id).port_id is None
