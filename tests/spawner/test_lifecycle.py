"""Hub restarts, orphans, named servers, idle culling, and the cloud-init we send."""
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from jhub_broker.spawner.reaper import Reaper

from .conftest import stop_hub, tagged


async def test_hub_restart_adopts_running_vm(os_hub, local_cloud, tmp_path, monkeypatch):
    # MockHub takes its database from here; both hubs share it, as a restarted hub does
    monkeypatch.setenv("JUPYTERHUB_TEST_DB_URL", f"sqlite:///{tmp_path}/hub.sqlite")
    from jupyterhub.tests.mocking import MockHub
    monkeypatch.setattr(MockHub, "test_clean_db", False)  # not configurable: a restarted hub keeps its users
    from jupyterhub.utils import random_port
    # a restarted hub comes back on the same internal address the notebook servers call
    hub_config = {"JupyterHub": {"cleanup_servers": False, "hub_port": random_port()}}
    app, hub = await os_hub(hub_config=hub_config)
    assert (await hub.start_and_wait("carol"))["ready"]
    server_id = app.users["carol"].spawner.server_id
    await stop_hub(app)

    app2, hub2 = await os_hub(hub_config=hub_config)
    spawner = app2.users["carol"].spawner
    assert spawner.server_id == server_id, "state was not restored"
    r = await hub2.request("GET", "user/carol/api/status", user="carol")
    assert r.status_code == 200, r.text
    servers, _, _ = await asyncio.to_thread(tagged, local_cloud)
    assert [s.id for s in servers] == [server_id], "the VM was rebooted or duplicated instead of adopted"
    await hub2.stop_and_wait("carol")


async def test_reaper_removes_orphans_only(os_hub, local_cloud):
    app, hub = await os_hub(floating_ip_pool="public")
    assert (await hub.start_and_wait("dave"))["ready"]
    owned = app.users["dave"].spawner.server_id

    conn = local_cloud.connect()

    def make_orphans():
        image = conn.image.find_image("ubuntu-24.04-jupyter")
        flavor = conn.compute.find_flavor("m1.small")
        net = conn.network.find_network("private")
        srv = conn.compute.create_server(name="jupyter-test-ghost", image_id=image.id, flavor_id=flavor.id,
                                         networks=[{"uuid": net.id}], tags=["jhub-broker-hub-test"])
        conn.compute.wait_for_server(srv, wait=60, interval=0.2)
        pub = conn.network.find_network("public")
        fip = conn.network.create_ip(floating_network_id=pub.id)
        conn.network.set_tags(fip, ["jhub-broker-hub-test"])
        vol = conn.block_storage.create_volume(name="jupyter-data-test-gone", size=1, metadata={
            "jhub_broker_hub": "test", "jhub_broker_user": "gone-user", "jhub_broker_server": ""})
        conn.block_storage.wait_for_status(vol, "available", wait=30, interval=0.2)
        return srv.id, fip.id, vol.id
    ghost, fip, vol = await asyncio.to_thread(make_orphans)

    reaper = Reaper(app.users["dave"].spawner)
    reaper.grace = 0
    removed = await reaper.sweep()
    assert removed["servers"] == [ghost]
    assert removed["floating_ips"] == [fip]
    assert removed["volumes"] == [vol]
    servers, fips, vols = await asyncio.to_thread(tagged, local_cloud)
    assert [s.id for s in servers] == [owned], "the reaper must not touch a user's running server"
    assert len(fips) == 1 and fips[0].id == app.users["dave"].spawner.floating_ip_id
    assert any(v.metadata.get("jhub_broker_user") == "dave" for v in vols)
    await hub.stop_and_wait("dave")


async def test_named_servers_get_their_own_vms(os_hub, local_cloud):
    app, hub = await os_hub(hub_config={"JupyterHub": {"allow_named_servers": True}}, volume_scope="server")
    a = await hub.start_and_wait("erin", server="analysis")
    b = await hub.start_and_wait("erin", server="teaching")
    assert a["ready"] and b["ready"]
    servers, _, vols = await asyncio.to_thread(tagged, local_cloud)
    names = sorted(s.name for s in servers)
    assert names == ["jupyter-test-erin-analysis", "jupyter-test-erin-teaching"], names
    assert len([v for v in vols if v.metadata.get("jhub_broker_user") == "erin"]) == 2
    for server in ("analysis", "teaching"):
        r = await hub.request("GET", f"user/erin/{server}/api/status", user="erin")
        assert r.status_code == 200, (server, r.text)
        await hub.stop_and_wait("erin", server=server)


async def test_idle_culler_stops_idle_vm(os_hub, local_cloud):
    culler = {"name": "idle-culler",
              "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=4", "--cull-every=2"]}
    hub_config = {"JupyterHub": {
        "services": [culler],
        "load_roles": [{"name": "idle-culler", "services": ["idle-culler"],
                        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]}]}}
    app, hub = await os_hub(hub_config=hub_config)
    assert (await hub.start_and_wait("frank"))["ready"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        model = (await hub.api("GET", "users/frank")).json()
        if "" not in model["servers"]:
            break
        await asyncio.sleep(1)
    else:
        pytest.fail("the idle culler did not stop the idle server")
    servers, _, _ = await asyncio.to_thread(tagged, local_cloud)
    assert servers == [], "culled server's VM is still in the cloud"


async def test_user_data_is_valid_cloud_config_without_token(os_hub, local_cloud, tmp_path):
    app, hub = await os_hub()
    assert (await hub.start_and_wait("grace"))["ready"]
    spawner = app.users["grace"].spawner
    conn = local_cloud.connect("local-admin")

    def user_data():
        r = conn.compute.get(f"/servers/{spawner.server_id}", microversion="2.3")
        return r.json()["server"].get("OS-EXT-SRV-ATTR:user_data")
    ud_b64 = await asyncio.to_thread(user_data)
    assert ud_b64, "the cloud should keep the server's user_data"
    ud = base64.b64decode(ud_b64).decode()
    token = spawner.api_token
    assert token and token not in ud, "the hub API token must not be in user_data"
    # the secret the VM used is spent: redeeming it again is refused
    import yaml
    files = {f["path"]: f for f in yaml.safe_load(ud)["write_files"]}
    boot = json.loads(base64.b64decode(files["/etc/jhub-broker/bootstrap.json"]["content"]))
    r = await asyncio.to_thread(requests.post, boot["url"], json={"secret": boot["secret"]}, timeout=10)
    assert r.status_code == 403
    # cloud-init's own schema check, as on a real Ubuntu cloud image
    if shutil.which("cloud-init") is None:
        pytest.skip("Debian's cloud-init is not installed")
    path = tmp_path / "user-data"
    path.write_text(ud)
    res = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Valid" in res.stdout + res.stderr
    await hub.stop_and_wait("grace")


async def test_reaper_grace_outlasts_the_longest_spawn(os_hub):
    from jhub_broker.spawner.traits import OpenStackTraits
    # the default follows the timeouts, with a margin
    assert OpenStackTraits(boot_timeout=600, notebook_timeout=600).reaper_grace == 1500
    # an operator's shorter grace is raised to the longest spawn: after a hub restart a server still
    # booting is in no spawner's state, and reaping it would kill a spawn that can still succeed
    app, hub = await os_hub(boot_timeout=600, notebook_timeout=600, reaper_grace=900)
    hub.token("early")
    assert Reaper(app.users["early"].spawner).grace == 1200


async def test_periodic_reaper_removes_orphans_on_its_interval(os_hub, local_cloud):
    # the timeouts of a spawn that cannot last longer than 2 s: the grace can be that short
    app, hub = await os_hub(reaper_interval=0.5, reaper_grace=2, boot_timeout=1, notebook_timeout=1,
                            volume_size=0)
    conn = local_cloud.connect()

    def make(name):
        srv = conn.compute.create_server(
            name=name, image_id=conn.image.find_image("ubuntu-24.04-jupyter").id,
            flavor_id=conn.compute.find_flavor("m1.small").id,
            networks=[{"uuid": conn.network.find_network("private").id}], tags=["jhub-broker-hub-test"])
        return conn.compute.wait_for_server(srv, wait=60, interval=0.2).id
    ghost = await asyncio.to_thread(make, "jupyter-test-ghost2")
    kept = await asyncio.to_thread(make, "jupyter-test-kept")
    # a server a user's saved state names (as after a hub restart) is not an orphan
    hub.token("keeper")
    orm_spawner = app.users["keeper"].spawner.orm_spawner
    orm_spawner.state = {"server_id": kept}
    app.db.commit()

    # the reaper task starts with the first spawn (this one fails at once: the flavor is not offered)
    hub.token("trigger")
    r = await hub.api("POST", "users/trigger/server", json={"flavor": "m9.none"})
    assert r.status_code == 400
    assert Reaper._tasks, "no periodic reaper is running"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        servers, _, _ = await asyncio.to_thread(tagged, local_cloud)
        if ghost not in {s.id for s in servers}:
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail("the periodic reaper did not remove the orphaned server")
    assert kept in {s.id for s in servers}, "the reaper removed a server a user owns"
    orm_spawner.state = {}
    app.db.commit()
    await asyncio.to_thread(conn.compute.delete_server, kept)
