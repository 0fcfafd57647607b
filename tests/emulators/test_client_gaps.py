"""What openstacksdk's own functional tests found missing, through the real openstacksdk and the real
``openstack`` CLI: bulk tag add, subnet CIDRs as Neutron takes them, volume attachment update (2.85),
Nova's /extensions, the admin server view, application credentials."""
import json
import urllib.error
import urllib.request

import keystoneauth1.exceptions
import openstack
import openstack.exceptions
import pytest

from tests.fixtures.cloud import start_cloud_process

# a 401 at authentication, as keystoneauth or openstacksdk's authorize() raise it
REFUSED = (keystoneauth1.exceptions.Unauthorized, openstack.exceptions.SDKException)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    cloud = start_cloud_process(str(tmp_path_factory.mktemp("gaps")),
                                config={"vm": {"enabled": False}, "boot_delay": 0.1, "delete_delay": 0.1})
    yield cloud
    cloud.stop()


@pytest.fixture(scope="module")
def conn(cloud):
    return cloud.connect()


def second_octet(cloud):
    return cloud.fixed_prefix.split(".")[1]


def call(cloud, conn, method, path, body=None, headers=None):
    req = urllib.request.Request(cloud.base_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-Auth-Token": conn.auth_token, "Content-Type": "application/json",
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# -- Neutron ----------------------------------------------------------------------------------

def test_bulk_tag_add_as_openstacksdks_own_test(conn):
    assert conn.network.find_extension("tag-creation")
    for make, delete in ((lambda: conn.network.create_network(name="tagged"), conn.network.delete_network),
                         (lambda: conn.network.create_security_group(name="tagged"),
                          conn.network.delete_security_group)):
        res = make()
        conn.network.add_tags(res, ["red", "green"])
        conn.network.add_tags(res, ["blue", "yellow"])
        assert conn.network.get_tags(res) == ["blue", "green", "red", "yellow"]
        conn.network.add_tags(res, ["blue", "yellow"])  # idempotent
        conn.network.add_tags(res, [])
        assert conn.network.get_tags(res) == ["blue", "green", "red", "yellow"]
        delete(res)


def test_bulk_tag_add_refuses_bad_bodies(cloud, conn):
    net = conn.network.create_network(name="tag-errors")
    try:
        for body, words in (({"tags": ["a", "a"]}, "Duplicate items"), ({}, "Invalid tags body"),
                            ({"tags": "a"}, "not a valid list")):
            status, answer = call(cloud, conn, "POST", f"/network/v2.0/networks/{net.id}/tags", body)
            assert status == 400 and words in answer["NeutronError"]["message"], answer
        assert conn.network.get_tags(net) == []
    finally:
        conn.network.delete_network(net)


def test_nova_has_no_bulk_tag_add(cloud, conn):
    """Real Nova only replaces the whole list (PUT) or adds one tag: POST is not allowed there either."""
    server = conn.compute.create_server(name="tags-srv", flavor_id=conn.compute.find_flavor("m1.small").id,
                                        image_id=conn.image.find_image("ubuntu-24.04").id, networks="none")
    try:
        status, _ = call(cloud, conn, "POST", f"/compute/v2.1/servers/{server.id}/tags", {"tags": ["a"]},
                         {"OpenStack-API-Version": "compute 2.26"})
        assert status == 405
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=30)


def test_subnet_cidr_with_host_bits_is_normalised(cloud):
    b = second_octet(cloud)
    cloud.cli("network", "create", "hostbits")
    subnet = cloud.cli("subnet", "create", "--network", "hostbits", "--subnet-range", f"127.{b}.200.5/24", "hb-sub")
    assert subnet["cidr"] == f"127.{b}.200.0/24"
    assert subnet["gateway_ip"] == f"127.{b}.200.1"
    bad = cloud.cli("subnet", "create", "--network", "hostbits", "--subnet-range", f"127.{b}.201.0", "no-prefix",
                    check=False)
    assert bad.returncode != 0 and "isn't a recognized IP subnet cidr" in bad.stderr
    cloud.cli("subnet", "delete", "hb-sub", json_output=False)
    cloud.cli("network", "delete", "hostbits", json_output=False)


def test_overlapping_subnets_on_other_networks_only(conn, cloud):
    b = second_octet(cloud)
    one, two = conn.network.create_network(name="ov-one"), conn.network.create_network(name="ov-two")
    try:
        a = conn.network.create_subnet(network_id=one.id, ip_version=4, cidr=f"127.{b}.210.0/24")
        # another network may overlap, as in Neutron with overlapping IPs (its default)
        c = conn.network.create_subnet(network_id=two.id, ip_version=4, cidr=f"127.{b}.210.0/25")
        assert c.cidr == f"127.{b}.210.0/25"
        # the same network may not
        with pytest.raises(openstack.exceptions.BadRequestException, match="overlaps with another subnet"):
            conn.network.create_subnet(network_id=one.id, ip_version=4, cidr=f"127.{b}.210.128/25")
        # the two overlapping networks still hand out different fixed IPs: they are the host's loopback
        p1 = conn.network.create_port(network_id=one.id)
        p2 = conn.network.create_port(network_id=two.id)
        assert p1.fixed_ips[0]["ip_address"] != p2.fixed_ips[0]["ip_address"]
        # one router cannot join overlapping subnets (Neutron's check)
        router = conn.network.create_router(name="ov-router")
        conn.network.add_interface_to_router(router, subnet_id=a.id)
        with pytest.raises(openstack.exceptions.BadRequestException, match="overlaps with cidr"):
            conn.network.add_interface_to_router(router, subnet_id=c.id)
        conn.network.remove_interface_from_router(router, subnet_id=a.id)
        conn.network.delete_router(router)
        for p in (p1, p2):
            conn.network.delete_port(p)
    finally:
        for net in (one, two):
            for sub in conn.network.subnets(network_id=net.id):
                conn.network.delete_subnet(sub)
            conn.network.delete_network(net)


# -- Nova -------------------------------------------------------------------------------------

def test_volume_attachment_delete_on_termination_update(cloud, conn):
    server = conn.compute.create_server(name="dot-srv", flavor_id=conn.compute.find_flavor("m1.small").id,
                                        image_id=conn.image.find_image("ubuntu-24.04").id, networks="none")
    server = conn.compute.wait_for_server(server, wait=30)
    vol = conn.block_storage.create_volume(name="dot-vol", size=1)
    conn.block_storage.wait_for_status(vol, "available", wait=30)
    conn.compute.create_volume_attachment(server, volume_id=vol.id)
    conn.block_storage.wait_for_status(vol, "in-use", wait=30)
    try:
        cloud.cli("--os-compute-api-version", "2.85", "server", "volume", "update", "--delete-on-termination",
                  "dot-srv", "dot-vol", json_output=False)
        listed = cloud.cli("--os-compute-api-version", "2.85", "server", "volume", "list", "dot-srv")
        assert [(a["Volume ID"], a["Delete On Termination?"]) for a in listed] == [(vol.id, True)]
        cloud.cli("--os-compute-api-version", "2.85", "server", "volume", "update",
                  "--preserve-on-termination", "dot-srv", "dot-vol", json_output=False)
        attached = conn.compute.get_server(server.id).attached_volumes
        assert [(a.id, a.delete_on_termination) for a in attached] == [(vol.id, False)]
        # other fields cannot change, and before 2.85 a PUT is a swap (admin only)
        status, body = call(cloud, conn, "PUT", f"/compute/v2.1/servers/{server.id}/os-volume_attachments/{vol.id}",
                            {"volumeAttachment": {"volumeId": vol.id, "device": "/dev/vdz"}})
        assert status == 403
        req = urllib.request.Request(
            f"{cloud.base_url}/compute/v2.1/servers/{server.id}/os-volume_attachments/{vol.id}", method="PUT",
            data=json.dumps({"volumeAttachment": {"volumeId": vol.id, "device": "/dev/vdz"}}).encode(),
            headers={"X-Auth-Token": conn.auth_token, "OpenStack-API-Version": "compute 2.85",
                     "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 400 and "device property is not mutable" in e.value.read().decode()
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=30)
    # preserved: the volume outlives the server
    assert conn.block_storage.get_volume(vol.id).status == "available"
    conn.block_storage.delete_volume(vol)


def test_compute_extensions(cloud, conn):
    extensions = list(conn.compute.extensions())
    assert extensions
    for ext in extensions:  # openstacksdk's own functional test
        assert isinstance(ext.name, str) and isinstance(ext.namespace, str) and isinstance(ext.alias, str)
    assert conn.compute.find_extension("OS-EXT-SRV-ATTR").name == "ExtendedServerAttributes"
    status, _ = call(cloud, conn, "GET", "/compute/v2.1/extensions/os-no-such-thing")
    assert status == 404
    listed = cloud.cli("extension", "list", "--compute")
    assert "os-volume-attachment-update" in [e["Alias"] for e in listed]


def test_admin_server_view_has_the_extended_attributes(cloud, conn):
    server = conn.compute.create_server(name="Attr Srv", flavor_id=conn.compute.find_flavor("m1.small").id,
                                        image_id=conn.image.find_image("ubuntu-24.04").id, networks="none",
                                        min_count=2)
    try:
        admin = cloud.connect("local-admin")
        mine = [s for s in admin.compute.servers(all_projects=True) if s.name.startswith("Attr Srv")]
        assert len(mine) == 2
        for s in mine:
            admin.compute.wait_for_server(s, wait=30)
        mine = sorted((admin.compute.get_server(s.id) for s in mine), key=lambda s: s.launch_index)
        assert [s.launch_index for s in mine] == [0, 1]
        assert mine[0].reservation_id.startswith("r-") and mine[0].reservation_id == mine[1].reservation_id
        for s in mine:
            assert (s.kernel_id, s.ramdisk_id, s.root_device_name) == ("", "", "/dev/vda")
            assert s.hypervisor_hostname and s.instance_name.startswith("instance-")
            assert s.hostname.startswith("attr-srv")
        assert mine[0].instance_name != mine[1].instance_name
        # a member sees none of them
        member = conn.compute.get_server(mine[0].id)
        assert (member.reservation_id, member.launch_index, member.root_device_name, member.instance_name) == \
            (None, None, None, None)
    finally:
        for s in conn.compute.servers():
            if s.name.startswith("Attr Srv"):
                conn.compute.delete_server(s)


# -- Keystone ---------------------------------------------------------------------------------

def appcred_connect(cloud, cred_id, secret):
    entry = cloud.clouds["local"]
    return openstack.connect(load_yaml_config=False, load_envvars=False, auth_type="v3applicationcredential",
                             auth={"auth_url": entry["auth"]["auth_url"], "application_credential_id": cred_id,
                                   "application_credential_secret": secret},
                             region_name=entry["region_name"])


def test_application_credential_create_authenticate_list_delete(cloud):
    made = cloud.cli("application", "credential", "create", "--description", "for the hub", "hub-cred")
    assert made["Secret"] and made["Unrestricted"] is False
    assert made["Project ID"] and "member" in json.dumps(made["Roles"])
    # the secret is shown once: not in list or show
    listed = cloud.cli("application", "credential", "list")
    assert "hub-cred" in [c["Name"] for c in listed] and "Secret" not in listed[0]
    shown = cloud.cli("application", "credential", "show", "hub-cred")
    assert shown["ID"] == made["ID"] and "Secret" not in shown

    # the new credential authenticates, with the creator's roles on the creator's project
    conn = appcred_connect(cloud, made["ID"], made["Secret"])
    conn.authorize()
    access = conn.session.auth.get_access(conn.session)
    assert access.role_names == ["member"] and access.project_id == made["Project ID"]
    assert "ubuntu-24.04" in [i.name for i in conn.image.images()]
    # restricted (the default): it cannot make more credentials
    with pytest.raises(openstack.exceptions.ForbiddenException, match="not allowed"):
        conn.identity.create_application_credential(access.user_id, "second")
    # a wrong secret does not authenticate
    with pytest.raises(REFUSED, match="requires authentication"):
        appcred_connect(cloud, made["ID"], made["Secret"] + "x").authorize()

    cloud.cli("application", "credential", "delete", "hub-cred", json_output=False)
    assert "hub-cred" not in [c["Name"] for c in cloud.cli("application", "credential", "list")]
    with pytest.raises(REFUSED, match="requires authentication"):
        appcred_connect(cloud, made["ID"], made["Secret"]).authorize()


def test_application_credential_roles_are_limited_to_the_creators(cloud):
    res = cloud.cli("application", "credential", "create", "--role", "admin", "too-much", check=False)
    assert res.returncode != 0 and "Could not find role assignment with role: admin" in res.stderr
    # the admin may give a credential only some of its roles
    made = cloud.cli("application", "credential", "create", "--role", "member", "member-only", cloud="local-admin")
    conn = appcred_connect(cloud, made["ID"], made["Secret"])
    assert conn.session.auth.get_access(conn.session).role_names == ["member"]
    req = urllib.request.Request(cloud.base_url + "/_emulator/faults", headers={"X-Auth-Token": conn.auth_token})
    with pytest.raises(urllib.error.HTTPError) as e:  # an admin-only route
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 403
    cloud.cli("application", "credential", "delete", "member-only", cloud="local-admin", json_output=False)


def test_network_availability_zones(conn):
    zones = list(conn.network.availability_zones())
    assert {(z.name, z.resource, z.state) for z in zones} == {("nova", "network", "available"),
                                                              ("nova", "router", "available")}
