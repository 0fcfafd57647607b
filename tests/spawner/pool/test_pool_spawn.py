"""Shared placement: notebooks as containers packed onto docker-host VMs the hub boots (real hub, proxy,
local cloud, dockerd in the VMs)."""
import asyncio

from tests.fixtures.kernel import execute_over_websocket

from .conftest import needs_docker, pool_hosts

pytestmark = needs_docker

USERS = [f"pooluser{i}" for i in range(5)]


async def run_code(hub, name, code):
    r = await hub.request("POST", f"user/{name}/api/kernels", user=name, json={"name": "python3"})
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    ws_url = hub.base.replace("http", "ws", 1) + hub.prefix.rstrip("/") + f"/user/{name}/api/kernels/{kid}/channels"
    try:
        return await execute_over_websocket(ws_url, hub.token(name), name, code)
    finally:
        await hub.request("DELETE", f"user/{name}/api/kernels/{kid}", user=name)


async def test_five_users_fill_three_hosts_and_run_code(pool_hub, local_cloud):
    app, hub = pool_hub
    models = await asyncio.gather(*(hub.start_and_wait(name, timeout=400) for name in USERS))
    for name, model in zip(USERS, models):
        assert model and model["ready"], (name, model)
    hosts = pool_hosts(local_cloud)
    assert len(hosts) == 3, [h.name for h in hosts]
    by_host = {}
    for name in USERS:
        state = app.users[name].spawner.get_state()
        by_host.setdefault(state["host_id"], []).append(state["port_on_host"])
    assert sorted(len(v) for v in by_host.values()) == [1, 2, 2]
    assert all(len(set(ports)) == len(ports) for ports in by_host.values()), "two notebooks share a port on a host"
    for name in USERS:
        status, out, err = await run_code(hub, name, "import os, socket; print(os.getuid(), os.environ['JUPYTERHUB_USER'])")
        assert (status, err) == ("ok", ""), (name, err)
        assert out.split() == ["1000", name]
