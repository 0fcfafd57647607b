"""Shared placement: notebooks as containers packed onto docker-host VMs the hub boots (real hub, proxy,
local cloud, dockerd in the VMs). The tests share one hub and pool and run in order: five users fill three
hosts; what a container can do; a user's files follow them to another host; the pool shrinks."""
import asyncio
import dataclasses

from tests.fixtures.kernel import execute_over_websocket

from tests.spawner.conftest import failed_spawn

from .conftest import needs_docker, pool_hosts, pool_manager

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


async def run_ok(hub, name, code):
    status, out, err = await run_code(hub, name, code)
    assert (status, err) == ("ok", ""), (name, err)
    return out


def placement(app, name):
    return app.users[name].spawner.get_state()




async def test_five_users_fill_three_hosts_and_run_code(pool_hub, local_cloud):
    app, hub = pool_hub
    for name in USERS:
        hub.token(name)
        r = await hub.api("POST", f"users/{name}/server", json={})
        assert r.status_code in (201, 202), r.text
    models = await asyncio.gather(*(hub.wait_ready(name, timeout=400) for name in USERS))
    for name, model in zip(USERS, models):
        assert model and model["ready"], (name, model)
    hosts = pool_hosts(local_cloud)
    assert len(hosts) == 3, [h.name for h in hosts]
    by_host = {}
    for name in USERS:
        state = placement(app, name)
        by_host.setdefault(state["host_id"], []).append(state["port_on_host"])
    assert sorted(len(v) for v in by_host.values()) == [1, 2, 2]
    assert all(len(set(ports)) == len(ports) for ports in by_host.values()), "two notebooks share a port on a host"
    for name in USERS:
        out = await run_ok(hub, name, "import os; print(os.getuid(), os.environ['JUPYTERHUB_USER'])")
        assert out.split() == ["1000", name]

    # what the spawn page showed (the spawns finish before a stream opened now would replay them)
    said = [" | ".join(e["message"] for e in app.users[name].spawner.__dict__["_events"]) for name in USERS]
    for text in said:
        for step in ("Placing your notebook", "Attaching your volume", "Starting your container",
                     "Notebook server is answering"):
            assert step in text, text
    assert sum("booting host" in text for text in said) == 3, said


async def test_containers_are_unprivileged_and_cannot_reach_docker(pool_hub):
    app, hub = pool_hub
    name = USERS[0]
    addresses = sorted({placement(app, n)["host_address"] for n in USERS})
    code = f"""
import json, socket, ssl
caps = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if l.startswith(('CapEff', 'CapBnd', 'NoNewPrivs')))
out = {{k: v.strip() for k, v in caps.items()}}
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
for addr in {addresses!r}:
    try:
        with socket.create_connection((addr, 2376), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(b'GET /version HTTP/1.0\\r\\n\\r\\n'); answer = s.recv(200)
            out[addr] = 'answered ' + answer[:40].decode(errors='replace')
    except (ssl.SSLError, ConnectionError, OSError) as e:
        out[addr] = 'refused ' + type(e).__name__
import os
out['docker_sock'] = os.path.exists('/var/run/docker.sock')
print(json.dumps(out))
"""
    import json
    out = json.loads(await run_ok(hub, name, code))
    assert out["CapEff"] == "0000000000000000" and out["CapBnd"] == "0000000000000000", out
    assert out["NoNewPrivs"] == "1", out
    assert not out["docker_sock"]
    for addr in addresses:
        assert out[addr].startswith("refused"), (addr, out[addr])


async def test_past_the_memory_limit_the_process_dies_not_the_host(pool_hub):
    app, hub = pool_hub
    name, neighbour = USERS[0], next(n for n in USERS[1:] if placement(app, n)["host_id"] ==
                                    placement(app, USERS[0])["host_id"])
    out = await run_ok(hub, name, "import subprocess, sys\n"
                       "print(subprocess.run([sys.executable, '-c', 'b = b\"x\" * (900 * 2**20)']).returncode)")
    assert out.strip() == "-9", out  # SIGKILL from the container's OOM killer (limit 700 MiB)
    assert (await run_ok(hub, name, "print(6 * 7)")).strip() == "42"
    assert (await run_ok(hub, neighbour, "print(6 * 7)")).strip() == "42"


async def test_files_follow_the_user_to_another_host(pool_hub):
    app, hub = pool_hub
    mover = next(n for n in USERS if sum(placement(app, m)["host_id"] == placement(app, n)["host_id"]
                                         for m in USERS) == 1)  # alone on their host
    first_host = placement(app, mover)["host_id"]
    await run_ok(hub, mover, "open('/home/jovyan/kept.txt', 'w').write('still here')")
    await hub.stop_and_wait(mover)
    # free a slot on a fuller host: the fullest host that fits is no longer the mover's old (empty) one
    other = next(n for n in USERS if n != mover)
    await hub.stop_and_wait(other)
    model = await hub.start_and_wait(mover, timeout=300)
    assert model and model["ready"], model
    assert placement(app, mover)["host_id"] != first_host
    assert (await run_ok(hub, mover, "print(open('/home/jovyan/kept.txt').read())")).strip() == "still here"
    USERS.remove(other)
    hub.empty_host = first_host


async def test_idle_hosts_go_down_to_headroom_and_busy_ones_stay(pool_hub, local_cloud):
    app, hub = pool_hub
    mgr = pool_manager(app)
    busy = {placement(app, n)["host_id"] for n in USERS}
    assert hub.empty_host not in busy and hub.empty_host in {h.id for h in pool_hosts(local_cloud)}
    # an idle window of 0 s: every empty host is due; headroom 1 keeps the empty one (the busy are full)
    mgr.config = dataclasses.replace(mgr.config, idle_host_timeout=0, headroom=1)
    assert await mgr.scale_down() == []
    mgr.config = dataclasses.replace(mgr.config, headroom=0)
    assert await mgr.scale_down() == [hub.empty_host]
    assert {h.id for h in pool_hosts(local_cloud)} == busy
    for name in USERS:
        assert (await run_ok(hub, name, "print(6 * 7)")).strip() == "42"


async def test_a_full_pool_says_so(pool_hub, local_cloud):
    app, hub = pool_hub
    hosts = len(pool_hosts(local_cloud))
    hub.token("latecomer")
    spawner = app.users["latecomer"].spawner
    spawner.pools = {"small": dict(spawner.pools["small"], max_hosts=hosts)}  # every host is full
    message = await failed_spawn(hub, "latecomer")
    assert "pool 'small' is full" in message and "max_hosts" in message, message
    assert len(pool_hosts(local_cloud)) == hosts


async def test_the_clouds_quota_says_so(pool_hub, local_cloud):
    app, hub = pool_hub
    conn = local_cloud.connect()
    used = conn.compute.get_limits().absolute.instances_used
    old = local_cloud.admin("PUT", "/_emulator/boot", {})["quotas"]["instances"]
    hub.token("overquota")
    spawner = app.users["overquota"].spawner
    spawner.pools = {"small": dict(spawner.pools["small"], max_hosts=10)}
    local_cloud.admin("PUT", "/_emulator/boot", {"quotas": {"instances": used}})
    try:
        message = await failed_spawn(hub, "overquota")
    finally:
        local_cloud.admin("PUT", "/_emulator/boot", {"quotas": {"instances": old}})
    assert "shared pool 'small' failed" in message and "Quota exceeded for instances" in message, message
    assert "quota is used up" in message, message


async def test_headroom_keeps_a_host_ready_for_the_next_start(pool_hub, local_cloud):
    app, hub = pool_hub
    before = {h.id for h in pool_hosts(local_cloud)}  # full: every slot taken
    for name in ("roomy", "quick"):
        hub.token(name)
        spawner = app.users[name].spawner
        spawner.pools = {"small": dict(spawner.pools["small"], headroom=2)}
    assert (await hub.start_and_wait("roomy", timeout=300))["ready"]
    # roomy's new host has one free slot left: one more host boots so that two stay free
    deadline = asyncio.get_running_loop().time() + 240
    while not [h for h in pool_manager(app).hosts.values() if h.server_id not in before and h.ready.done()
               and not h.reservations]:
        assert asyncio.get_running_loop().time() < deadline, "no host was booted for the headroom"
        await asyncio.sleep(0.5)
    hosts = {h.id for h in pool_hosts(local_cloud)}
    assert len(hosts - before) == 2
    assert (await hub.start_and_wait("quick", timeout=300))["ready"]
    events = " | ".join(e["message"] for e in app.users["quick"].spawner.__dict__["_events"])
    assert "booting host" not in events, events
    assert placement(app, "quick")["host_id"] == placement(app, "roomy")["host_id"]  # the fullest that fits
    assert {h.id for h in pool_hosts(local_cloud)} == hosts
