"""The hub dies while its pool grows; restarted, it adopts the running notebooks and the reaper removes the
host whose boot it did not finish and a container no user's state names."""
import asyncio
import time

from jhub_broker.spawner import bootstrap
from jhub_broker.spawner.pool import docker as pooldocker
from jhub_broker.spawner.reaper import Reaper
from tests.spawner.conftest import wipe_hub_resources

from .conftest import SHARED, needs_docker, pool_hosts, pool_manager, start_pool_hub, stop_pool_hub

pytestmark = needs_docker

ONE_PER_HOST = dict(SHARED, mem_limit=1400 * 2 ** 20)  # 1536 MiB for notebooks per host: one fits


async def test_hub_killed_during_scale_up_adopts_notebooks_and_reaps_orphans(local_cloud, tmp_path, monkeypatch):
    from jupyterhub.tests.mocking import MockHub
    from jupyterhub.utils import random_port
    monkeypatch.setenv("JUPYTERHUB_TEST_DB_URL", f"sqlite:///{tmp_path}/hub.sqlite")
    monkeypatch.setattr(MockHub, "test_clean_db", False)  # a restarted hub keeps its users
    hub_config = {"JupyterHub": {"cleanup_servers": False, "hub_port": random_port()}}
    opts = dict(hub_config=hub_config, profiles=[ONE_PER_HOST], volume_size=0)
    app, hub = await start_pool_hub(local_cloud, tmp_path, **opts)
    old = None
    try:
        assert (await hub.start_and_wait("keeper", timeout=300))["ready"]
        state = app.users["keeper"].spawner.get_state()
        (first,) = [h.id for h in pool_hosts(local_cloud)]
        # a container of a spawn whose state the hub never saved (it died first)
        mgr = pool_manager(app)
        client = mgr.hosts[first].client
        ghost = await pooldocker.call(client, "create_container", "jhub-base", ["sleep", "infinity"],
                                      name="jupyter-test-ghost", labels={f"{pooldocker.LABEL}.pool": "small",
                                                                         f"{pooldocker.LABEL}.owner": "ghost/"},
                                      host_config=client.create_host_config(network_mode="none", cap_drop=["ALL"]))
        await pooldocker.call(client, "start", ghost["Id"])

        # the second host stays in BUILD long enough for the hub to die before it gets its certificate
        old = local_cloud.admin("GET", "/_emulator/boot")["boot_delay"]
        local_cloud.admin("PUT", "/_emulator/boot", {"boot_delay": 15})
        hub.token("late")
        r = await hub.api("POST", "users/late/server", json={})
        assert r.status_code in (201, 202), r.text
        deadline = time.monotonic() + 60
        while len(pool_hosts(local_cloud)) < 2:  # the scale-up has begun: a second host is booting
            assert time.monotonic() < deadline, "no second host was booted for the second user"
            await asyncio.sleep(0.2)
    finally:
        if old is not None:
            local_cloud.admin("PUT", "/_emulator/boot", {"boot_delay": old})
        await stop_pool_hub(app)  # the hub dies: its memory (bootstrap secrets included) is gone
    monkeypatch.setattr(bootstrap, "registry", bootstrap.BootstrapRegistry())
    (second,) = [h.id for h in pool_hosts(local_cloud) if h.id != first]

    app2, hub2 = await start_pool_hub(local_cloud, tmp_path, **opts)
    try:
        spawner = app2.users["keeper"].spawner
        assert spawner.get_state()["host_id"] == state["host_id"] == first
        r = await hub2.request("GET", "user/keeper/api/status", user="keeper")
        assert r.status_code == 200, r.text

        reaper = Reaper(spawner)
        reaper.grace = 0
        removed = await reaper.sweep()
        assert removed.get("pool_hosts") == [second]
        assert removed.get("pool_containers") == ["jupyter-test-ghost"]
        assert [h.id for h in pool_hosts(local_cloud)] == [first]
        r = await hub2.request("GET", "user/keeper/api/status", user="keeper")
        assert r.status_code == 200, "the adopted notebook was touched by the reaper"
        await hub2.stop_and_wait("keeper")
    finally:
        await stop_pool_hub(app2)
        await asyncio.to_thread(wipe_hub_resources, local_cloud)
