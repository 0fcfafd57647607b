"""Neutron and Cinder of the local cloud, driven by the real openstack CLI and openstacksdk."""
import json
import time
import urllib.error
import urllib.request

import openstack.exceptions
import pytest


def _wait(fn, timeout=10, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)


def _raw(cloud, conn, method, path, body=None):
    """A raw request with the connection's token: (status, parsed body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cloud.base_url + path, data=data, method=method,
                                 headers={"X-Auth-Token": conn.auth_token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None), resp.headers
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None), e.headers


# -- Neutron through the CLI -------------------------------------------------

def test_network_flow_with_cli(local_cloud):
    c = local_cloud
    net = c.cli("network", "create", "cli-net")
    assert net["name"] == "cli-net" and net["status"] == "ACTIVE"

    bad = c.cli("subnet", "create", "--network", "cli-net", "--subnet-range", "10.0.0.0/24", "cli-bad",
                check=False)
    assert bad.returncode != 0
    assert "127.0.0.0/8" in bad.stderr and "10.0.0.0/24" in bad.stderr and "such as 127." in bad.stderr

    sub = c.cli("subnet", "create", "--network", "cli-net", "--subnet-range", "127.201.0.0/24", "cli-sub")
    assert sub["cidr"] == "127.201.0.0/24" and sub["gateway_ip"] == "127.201.0.1"
    overlap = c.cli("subnet", "create", "--network", "cli-net", "--subnet-range", "127.201.0.0/25", "cli-ov",
                    check=False)
    assert overlap.returncode != 0 and "overlaps with another subnet" in overlap.stderr

    # the seeded router already has the default network as interface
    r1 = c.cli("router", "show", "router1")
    assert [i["ip_address"] for i in r1["interfaces_info"]] == [c.fixed_prefix + "1"]

    router = c.cli("router", "create", "--external-gateway", "public", "cli-router")
    assert router["external_gateway_info"]["network_id"] == c.cli("network", "show", "public")["id"]
    c.cli("router", "add", "subnet", "cli-router", "cli-sub", json_output=False)
    shown = c.cli("router", "show", "cli-router")
    assert [(i["subnet_id"], i["ip_address"]) for i in shown["interfaces_info"]] == [(sub["id"], "127.201.0.1")]

    sg = c.cli("security", "group", "create", "cli-sg")
    rule = c.cli("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "8888",
                 "--remote-ip", "127.0.0.1/32", "cli-sg")
    assert (rule["port_range_min"], rule["port_range_max"], rule["protocol"]) == (8888, 8888, "tcp")
    assert rule["remote_ip_prefix"] == "127.0.0.1/32" and rule["direction"] == "ingress"
    dup = c.cli("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "8888",
                "--remote-ip", "127.0.0.1/32", "cli-sg", check=False)
    assert dup.returncode != 0 and "Security group rule already exists" in dup.stderr
    rules = c.cli("security", "group", "rule", "list", "cli-sg")
    assert len(rules) == 3  # two default egress rules and ours
    assert any(r["IP Protocol"] == "tcp" and r["Port Range"] == "8888:8888" for r in rules)
    assert "cli-sg" in [g["Name"] for g in c.cli("security", "group", "list")]

    port = c.cli("port", "create", "--network", "cli-net", "--security-group", "cli-sg", "cli-port")
    assert port["fixed_ips"][0]["ip_address"] == "127.201.0.2"
    assert port["security_group_ids"] == [sg["id"]]

    fip = c.cli("floating", "ip", "create", "public")
    address = fip["floating_ip_address"]
    assert address.startswith(c.floating_prefix) and fip["status"] == "DOWN" and fip["port_id"] is None
    c.cli("floating", "ip", "set", "--port", "cli-port", address, json_output=False)
    shown = c.cli("floating", "ip", "show", address)
    assert (shown["status"], shown["port_id"], shown["fixed_ip_address"]) == ("ACTIVE", port["id"], "127.201.0.2")
    assert shown["router_id"] == router["id"]
    c.cli("floating", "ip", "unset", "--port", address, json_output=False)
    shown = c.cli("floating", "ip", "show", address)
    assert (shown["status"], shown["port_id"], shown["fixed_ip_address"]) == ("DOWN", None, None)

    in_use = c.cli("network", "delete", "cli-net", check=False, json_output=False)
    assert in_use.returncode != 0
    assert "409" in in_use.stderr and "There are one or more ports still in use on the network" in in_use.stderr
    sg_in_use = c.cli("security", "group", "delete", "cli-sg", check=False, json_output=False)
    assert sg_in_use.returncode != 0 and "in use" in sg_in_use.stderr

    # clean up in the order Neutron wants
    c.cli("floating", "ip", "delete", address, json_output=False)
    assert address not in [f["Floating IP Address"] for f in c.cli("floating", "ip", "list")]
    c.cli("port", "delete", "cli-port", json_output=False)
    c.cli("security", "group", "delete", "cli-sg", json_output=False)
    c.cli("router", "remove", "subnet", "cli-router", "cli-sub", json_output=False)
    c.cli("router", "delete", "cli-router", json_output=False)
    c.cli("network", "delete", "cli-net", json_output=False)
    assert "cli-net" not in [n["Name"] for n in c.cli("network", "list")]


# -- Neutron through openstacksdk ----------------------------------------------

def test_network_flow_with_sdk(local_cloud):
    conn = local_cloud.connect()
    net = conn.network.create_network(name="sdk-net")
    with pytest.raises(openstack.exceptions.BadRequestException) as exc:
        conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.0.0.0/24")
    assert "only allows subnets inside 127.0.0.0/8" in str(exc.value)
    sub = conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="127.202.0.0/24", name="sdk-sub")
    router = conn.network.find_router("router1", ignore_missing=False)
    conn.network.add_interface_to_router(router, subnet_id=sub.id)
    ifaces = list(conn.network.ports(device_id=router.id, device_owner="network:router_interface"))
    assert sorted(p.fixed_ips[0]["ip_address"] for p in ifaces) == sorted(["127.202.0.1", local_cloud.fixed_prefix + "1"])

    sg = conn.network.create_security_group(name="sdk-sg")
    conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                            port_range_min=8888, port_range_max=8888,
                                            remote_ip_prefix="127.0.0.1/32")
    with pytest.raises(openstack.exceptions.ConflictException) as exc:
        conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                                port_range_min=8888, port_range_max=8888,
                                                remote_ip_prefix="127.0.0.1/32")
    assert "Security group rule already exists" in str(exc.value)
    with pytest.raises(openstack.exceptions.BadRequestException) as exc:
        conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                                port_range_min=9000, port_range_max=8000)
    assert "port_range_min must be <= port_range_max" in str(exc.value)
    with pytest.raises(openstack.exceptions.BadRequestException):
        conn.network.create_security_group_rule(security_group_id=sg.id, direction="sideways")
    rules = list(conn.network.security_group_rules(security_group_id=sg.id))
    assert len(rules) == 3

    port = conn.network.create_port(network_id=net.id, name="sdk-port", security_group_ids=[sg.id],
                                    fixed_ips=[{"subnet_id": sub.id, "ip_address": "127.202.0.10"}])
    assert port.fixed_ips == [{"subnet_id": sub.id, "ip_address": "127.202.0.10"}]
    with pytest.raises(openstack.exceptions.ConflictException) as exc:
        conn.network.create_port(network_id=net.id, fixed_ips=[{"ip_address": "127.202.0.10"}])
    assert "already allocated" in str(exc.value)

    # filters real Neutron supports
    assert [p.id for p in conn.network.ports(network_id=net.id, device_owner="")] == [port.id]
    assert [p.id for p in conn.network.ports(fixed_ips=["ip_address=127.202.0.10"])] == [port.id]
    conn.network.set_tags(net, ["jhub", "sdk"])
    assert [n.id for n in conn.network.networks(tags="jhub,sdk")] == [net.id]
    assert [n.id for n in conn.network.networks(any_tags="sdk,nothing")] == [net.id]
    assert net.id not in [n.id for n in conn.network.networks(not_tags="sdk")]
    assert conn.network.get_network(net.id).tags == ["jhub", "sdk"]

    public = conn.network.find_network("public", ignore_missing=False)
    with pytest.raises(openstack.exceptions.BadRequestException) as exc:
        conn.network.create_ip(floating_network_id=net.id)
    assert "is not a valid external network" in str(exc.value)
    fip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
    assert fip.status == "ACTIVE" and fip.fixed_ip_address == "127.202.0.10"
    assert fip.port_details["device_owner"] == ""
    assert [f.id for f in conn.network.ips(floating_ip_address=fip.floating_ip_address)] == [fip.id]
    fip = conn.network.update_ip(fip, port_id=None)
    assert fip.status == "DOWN" and fip.fixed_ip_address is None
    fip = conn.network.update_ip(fip, port_id=port.id)
    assert fip.status == "ACTIVE"
    # deleting the port disassociates the floating IP
    conn.network.delete_port(port)
    fip = conn.network.get_ip(fip.id)
    assert fip.status == "DOWN" and fip.port_id is None
    conn.network.delete_ip(fip)
    with pytest.raises(openstack.exceptions.NotFoundException) as exc:
        conn.network.get_ip(fip.id)
    assert f"Floating IP {fip.id} could not be found" in str(exc.value)

    with pytest.raises(openstack.exceptions.ConflictException) as exc:
        conn.network.delete_subnet(sub)
    assert "SubnetInUse" in str(exc.value.details or "") or "One or more ports" in str(exc.value)
    conn.network.remove_interface_from_router(router, subnet_id=sub.id)
    conn.network.delete_security_group(sg)
    conn.network.delete_network(net)
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.network.get_network(net.id)

    quota = conn.network.get_quota(conn.current_project_id, details=True)
    assert quota.floating_ips["limit"] == 10 and "used" in quota.networks


def test_neutron_discovery_errors_and_unknown_routes(local_cloud):
    conn = local_cloud.connect()
    status, body, _ = _raw(local_cloud, conn, "GET", "/network/")
    assert status == 200 and body["versions"][0]["id"] == "v2.0"
    status, body, _ = _raw(local_cloud, conn, "GET", "/network/v2.0/extensions")
    aliases = {e["alias"] for e in body["extensions"]}
    assert {"router", "external-net", "security-group", "standard-attr-tag", "quotas"} <= aliases
    assert "dns-integration" not in aliases
    status, body, _ = _raw(local_cloud, conn, "GET", "/network/v2.0/no-such-thing")
    assert status == 404
    status, body, _ = _raw(local_cloud, conn, "GET", "/network/v2.0/floatingips/nope")
    assert status == 404
    assert body == {"NeutronError": {"type": "FloatingIPNotFound", "message": "Floating IP nope could not be found",
                                     "detail": ""}}
    status, body, _ = _raw(local_cloud, conn, "GET", "/network/v2.0/networks?bogus=1")
    assert status == 400
    status, body, _ = _raw(local_cloud, conn, "GET", "/network/v2.0/networks?fields=id&fields=name&name=public")
    assert status == 200 and set(body["networks"][0]) == {"id", "name"}


def test_floating_ip_quota_over_quota(make_cloud):
    cloud = make_cloud({"quotas": {"floatingip": 1, "volumes": 1}, "vm": {"enabled": False}})
    conn = cloud.connect()
    public = conn.network.find_network("public", ignore_missing=False)
    conn.network.create_ip(floating_network_id=public.id)
    with pytest.raises(openstack.exceptions.ConflictException) as exc:
        conn.network.create_ip(floating_network_id=public.id)
    assert exc.value.status_code == 409
    assert "Quota exceeded for resources: ['floatingip']." in str(exc.value)
    status, body, _ = _raw(cloud, conn, "POST", "/network/v2.0/floatingips",
                           {"floatingip": {"floating_network_id": public.id}})
    assert (status, body) == (409, {"NeutronError": {"type": "OverQuota", "detail": "",
                                                     "message": "Quota exceeded for resources: ['floatingip']."}})

    # volumes: quota 1
    conn.block_storage.create_volume(size=1, name="only")
    with pytest.raises(openstack.exceptions.HttpException) as exc:
        conn.block_storage.create_volume(size=1, name="second")
    assert exc.value.status_code == 413
    assert "VolumeLimitExceeded: Maximum number of volumes allowed (1) exceeded for quota 'volumes'." \
        in str(exc.value)


def test_volume_gigabytes_quota(make_cloud):
    cloud = make_cloud({"quotas": {"gigabytes": 100}, "vm": {"enabled": False}})
    conn = cloud.connect()
    conn.block_storage.create_volume(size=80, name="big")
    with pytest.raises(openstack.exceptions.HttpException) as exc:
        conn.block_storage.create_volume(size=50, name="too-big")
    assert exc.value.status_code == 413
    assert ("VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota. "
            "Requested 50G, quota is 100G and 80G has been consumed.") in str(exc.value)
    status, body, _ = _raw(cloud, conn, "POST", f"/volume/v3/{conn.current_project_id}/volumes",
                           {"volume": {"size": 50}})
    assert status == 413 and body["overLimit"]["code"] == 413 and body["overLimit"]["retryAfter"] == "0"

    # a volume Nova attached is in-use and cannot be deleted
    vol = conn.block_storage.create_volume(size=1, name="attached")
    vol = conn.block_storage.wait_for_status(vol, "available", wait=10, interval=0.1)
    flavor = conn.compute.find_flavor("m1.small", ignore_missing=False)
    image = conn.image.find_image("ubuntu-24.04", ignore_missing=False)
    server = conn.compute.create_server(name="vm", flavor_id=flavor.id, image_id=image.id,
                                        networks=[{"uuid": conn.network.find_network("private").id}])
    server = conn.compute.wait_for_server(server, wait=30, interval=0.2)
    conn.compute.create_volume_attachment(server, volume_id=vol.id)
    vol = conn.block_storage.wait_for_status(vol, "in-use", wait=10, interval=0.1)
    assert vol.attachments[0]["server_id"] == server.id
    with pytest.raises(openstack.exceptions.BadRequestException) as exc:
        conn.block_storage.delete_volume(vol)
    assert ("Invalid volume: Volume status must be available or error or error_restoring or error_extending or "
            "error_managing and must not be migrating, attached, belong to a group, have snapshots, awaiting a "
            "transfer, or be disassociated from snapshots after volume transfer.") in str(exc.value)


# -- Cinder ----------------------------------------------------------------------

def test_volume_flow_with_cli(local_cloud):
    c = local_cloud
    vol = c.cli("volume", "create", "--size", "1", "v1")
    assert vol["size"] == 1 and vol["name"] == "v1" and vol["status"] in ("creating", "available")
    _wait(lambda: c.cli("volume", "show", "v1")["status"] == "available")
    shown = c.cli("volume", "show", "v1")
    assert shown["id"] == vol["id"] and shown["type"] == "__DEFAULT__"
    assert "v1" in [v["Name"] for v in c.cli("volume", "list")]
    c.cli("volume", "set", "--property", "purpose=test", "v1", json_output=False)
    assert c.cli("volume", "show", "v1")["properties"] == {"purpose": "test"}
    c.cli("volume", "delete", "v1", json_output=False)
    _wait(lambda: "v1" not in [v["Name"] for v in c.cli("volume", "list")], timeout=20)


def test_volume_api_with_sdk(local_cloud):
    conn = local_cloud.connect()
    pid = conn.current_project_id
    vol = conn.block_storage.create_volume(size=2, name="sdk-vol", metadata={"a": "1"})
    vol = conn.block_storage.wait_for_status(vol, "available", wait=10, interval=0.1)
    assert vol.size == 2 and vol.metadata == {"a": "1"}
    assert [v.id for v in conn.block_storage.volumes(name="sdk-vol")] == [vol.id]
    assert [v.id for v in conn.block_storage.volumes(status="available", name="sdk-vol")] == [vol.id]
    conn.block_storage.set_volume_metadata(vol, b="2")
    vol = conn.block_storage.get_volume(vol.id)
    assert vol.metadata == {"a": "1", "b": "2"}
    conn.block_storage.delete_volume_metadata(vol, keys=["a"])
    assert conn.block_storage.get_volume(vol.id).metadata == {"b": "2"}

    status, body, headers = _raw(local_cloud, conn, "GET", f"/volume/v3/{pid}/limits")
    absolute = body["limits"]["absolute"]
    assert absolute["maxTotalVolumes"] == 10 and absolute["totalVolumesUsed"] >= 1
    assert absolute["totalGigabytesUsed"] >= 2
    assert headers["OpenStack-API-Version"] == "volume 3.0"
    status, body, _ = _raw(local_cloud, conn, "GET", f"/volume/v3/{pid}/os-quota-sets/{pid}?usage=True")
    assert body["quota_set"]["volumes"]["limit"] == 10 and body["quota_set"]["volumes"]["in_use"] >= 1
    status, body, _ = _raw(local_cloud, conn, "GET", f"/volume/v3/{pid}/types")
    assert [t["name"] for t in body["volume_types"]] == ["__DEFAULT__"]
    status, body, _ = _raw(local_cloud, conn, "GET", "/volume/")
    assert status == 300 and body["versions"][0]["version"] == "3.70"
    assert body["versions"][0]["min_version"] == "3.0"

    status, body, _ = _raw(local_cloud, conn, "GET", f"/volume/v3/{pid}/volumes/nope")
    assert status == 404 and body == {"itemNotFound": {"code": 404, "message": "Volume nope could not be found."}}

    conn.block_storage.delete_volume(vol)
    conn.block_storage.wait_for_delete(vol, wait=10, interval=0.1)
