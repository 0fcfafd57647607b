"""Faults that act: a request carried out whose answer is lost (an error, a dropped connection, a hang),
seen through the real openstacksdk, and the checks on fault rules."""
import json
import urllib.error
import urllib.request

import keystoneauth1.exceptions
import openstack.exceptions
import pytest

from tests.fixtures.cloud import start_cloud_process

# what a client sees when the connection is closed with no answer, or when no answer comes in time
LOST = (openstack.exceptions.SDKException, keystoneauth1.exceptions.ConnectionError)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    cloud = start_cloud_process(str(tmp_path_factory.mktemp("faults")),
                                config={"vm": {"enabled": False}, "boot_delay": 0.1, "delete_delay": 0.1})
    yield cloud
    cloud.stop()


@pytest.fixture
def conn(cloud):
    cloud.admin("DELETE", "/_emulator/faults")
    conn = cloud.connect()
    conn.authorize()  # the token is in hand before any rule is added
    yield conn
    cloud.admin("DELETE", "/_emulator/faults")
    for s in conn.compute.servers():
        conn.compute.delete_server(s)
        conn.compute.wait_for_delete(s, wait=30)
    for v in conn.block_storage.volumes():
        conn.block_storage.wait_for_status(v, "available", wait=30)
        conn.block_storage.delete_volume(v)
        conn.block_storage.wait_for_delete(v, wait=30)


def fired(cloud):
    return [r["fired"] for r in cloud.admin("GET", "/_emulator/faults")["faults"]]


def create_server(conn, name):
    return conn.compute.create_server(name=name, flavor_id=conn.compute.find_flavor("m1.small").id,
                                      image_id=conn.image.find_image("ubuntu-24.04").id, networks="auto")


def test_500_after_server_create_leaves_the_server(cloud, conn):
    cloud.admin("POST", "/_emulator/faults",
                {"path": r"/servers$", "method": "POST", "when": "after", "status": 500, "count": 1})
    with pytest.raises(openstack.exceptions.HttpException) as e:
        create_server(conn, "lost-answer")
    assert e.value.status_code == 500
    assert "unexpected error" in str(e.value)
    # the answer was lost, the server was not
    made = [s for s in conn.compute.servers() if s.name == "lost-answer"]
    assert len(made) == 1
    assert conn.compute.wait_for_server(made[0], wait=30).status == "ACTIVE"
    assert fired(cloud) == [1]


def test_500_before_server_create_makes_nothing(cloud, conn):
    cloud.admin("POST", "/_emulator/faults", {"path": r"/servers$", "method": "POST", "status": 500, "count": 1})
    with pytest.raises(openstack.exceptions.HttpException):
        create_server(conn, "never-made")
    assert "never-made" not in [s.name for s in conn.compute.servers()]


def test_drop_after_volume_create_leaves_the_volume(cloud, conn):
    cloud.admin("POST", "/_emulator/faults",
                {"path": r"/volumes$", "method": "POST", "when": "after", "drop": True, "count": 1})
    with pytest.raises(LOST) as e:
        conn.block_storage.create_volume(name="dropped", size=1)
    assert not isinstance(e.value, openstack.exceptions.HttpException)  # no HTTP answer at all
    assert [v.name for v in conn.block_storage.volumes()] == ["dropped"]
    # the cloud still answers on new connections
    assert conn.block_storage.create_volume(name="second", size=1).name == "second"


def test_drop_before_delete_keeps_the_volume(cloud, conn):
    vol = conn.block_storage.create_volume(name="kept", size=1)
    conn.block_storage.wait_for_status(vol, "available", wait=30)
    cloud.admin("POST", "/_emulator/faults",
                {"path": r"/volumes/", "method": "DELETE", "drop": True, "count": 1})
    with pytest.raises(LOST):
        conn.block_storage.delete_volume(vol)
    assert [v.name for v in conn.block_storage.volumes()] == ["kept"]


def test_hang_after_delete_times_out_the_client_and_deletes(cloud, conn):
    vol = conn.block_storage.create_volume(name="hung", size=1)
    conn.block_storage.wait_for_status(vol, "available", wait=30)
    cloud.admin("POST", "/_emulator/faults",
                {"path": r"/volumes/", "method": "DELETE", "when": "after", "hang": 5, "count": 1})
    impatient = cloud.connect(api_timeout=1)
    with pytest.raises(LOST) as e:
        impatient.block_storage.delete_volume(vol.id)
    assert "timed out" in str(e.value).lower()
    assert [v.name for v in conn.block_storage.volumes()] == []


def test_hang_before_answers_nothing_and_does_nothing(cloud, conn):
    cloud.admin("POST", "/_emulator/faults",
                {"path": r"/servers$", "method": "POST", "hang": 5, "count": 1})
    impatient = cloud.connect(api_timeout=1)
    with pytest.raises(LOST) as e:
        create_server(impatient, "hung")
    assert "timed out" in str(e.value).lower()
    assert [s.name for s in conn.compute.servers()] == []


def test_hang_shorter_than_the_timeout_ends_in_a_dropped_connection(cloud, conn):
    cloud.admin("POST", "/_emulator/faults", {"path": r"/flavors", "method": "GET", "hang": 0.5, "count": 1})
    with pytest.raises(LOST) as e:
        list(conn.compute.flavors())
    assert "timed out" not in str(e.value).lower()
    assert "m1.small" in [f.name for f in conn.compute.flavors()]


def test_rate_applies_to_after_faults(cloud, conn):
    cloud.admin("POST", "/_emulator/faults",
                {"service": "network", "method": "POST", "path": "/security-groups$", "when": "after",
                 "status": 503, "rate": 0.5})
    failed = 0
    for i in range(12):
        try:
            conn.network.create_security_group(name=f"g{i}")
        except openstack.exceptions.HttpException as e:
            assert e.status_code == 503
            failed += 1
    assert 0 < failed < 12 and fired(cloud) == [failed]
    # every one was made, answered or not
    assert sum(1 for g in conn.network.security_groups() if g.name.startswith("g")) == 12
    for g in conn.network.security_groups():
        if g.name != "default":
            conn.network.delete_security_group(g)


def post_rule(cloud, rule):
    req = urllib.request.Request(cloud.base_url + "/_emulator/faults", data=json.dumps(rule).encode(),
                                 method="POST", headers={"X-Emulator-Admin": cloud.admin_secret})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("rule, key", [
    ({"path": "/servers", "when": "later", "status": 500}, "when"),
    ({"path": "/servers", "when": "after"}, "when"),
    ({"path": "/servers", "when": "after", "latency": 1}, "when"),
    ({"path": "/servers", "drop": "yes"}, "drop"),
    ({"path": "/servers", "hang": 0}, "hang"),
    ({"path": "/servers", "hang": "5"}, "hang"),
    ({"path": "/servers", "drop": True, "status": 500}, "drop"),
    ({"path": "/servers", "hang": 3, "drop": True}, "hang"),
    ({"path": "/servers", "status": 418}, "status"),
    ({"path": "/servers", "status": 500, "rate": 2}, "rate"),
    ({"path": "/servers", "status": 500, "count": 0}, "count"),
    ({"path": "(", "status": 500}, "path"),
    ({"path": "/servers", "method": "FETCH", "status": 500}, "method"),
    ({"path": "/servers", "service": "swift", "status": 500}, "service"),
    ({"path": "/servers", "drop": True, "message": "x"}, "message"),
    ({"path": "/servers", "staus": 500}, "staus"),
    ({"path": "/servers"}, "status"),
    ({"faults": [{"path": "/a", "status": 500}, {"path": "/b", "when": "sometime", "drop": True}]}, "when"),
])
def test_nonsense_rules_are_refused_naming_the_key(cloud, rule, key):
    cloud.admin("DELETE", "/_emulator/faults")
    status, body = post_rule(cloud, rule)
    assert status == 400
    assert f"'{key}'" in body["error"]["message"], body
    assert cloud.admin("GET", "/_emulator/faults")["faults"] == []  # nothing half-added


def test_rule_combinations_are_accepted_and_listed(cloud):
    cloud.admin("DELETE", "/_emulator/faults")
    rules = [{"path": "/servers", "when": "after", "status": 500, "rate": 0.2},
             {"path": "/ports", "when": "after", "drop": True, "count": 3, "method": "post"},
             {"service": "volume", "when": "before", "hang": 2.5, "latency": 0.1},
             {"path": "/images", "drop": False, "latency": 0.1}]
    status, _ = post_rule(cloud, {"faults": rules})
    assert status == 201
    listed = cloud.admin("GET", "/_emulator/faults")["faults"]
    assert [(r.get("when"), r.get("status"), r.get("drop"), r.get("hang"), r.get("method")) for r in listed] == [
        ("after", 500, None, None, None), ("after", None, True, None, "POST"),
        ("before", None, None, 2.5, None), (None, None, False, None, None)]
    cloud.admin("DELETE", "/_emulator/faults")


def test_config_file_rules_are_checked_too(tmp_path):
    with pytest.raises(RuntimeError, match="'drop'"):
        start_cloud_process(str(tmp_path / "bad"), config={"vm": {"enabled": False},
                                                           "faults": [{"path": "/x", "drop": 1}]})
