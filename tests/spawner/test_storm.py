"""A spawn storm under faults: a dozen users start at once while the cloud fails 20 % of the requests on every
route the spawner uses, before the action (5xx, 429) and after it (the action happens, then a 500 or a
dropped connection).  Every server must end ready, and after stop nothing may be left in the cloud."""
import asyncio

from .conftest import footprint, injected_faults

USERS = [f"storm{i:02d}" for i in range(12)]
FAULT_RATE = 0.2
KINDS = [{"status": 500}, {"status": 502}, {"status": 503}, {"status": 504}, {"status": 429, "retry_after": 0.2},
         {"status": 500, "when": "after"}, {"drop": True, "when": "after"}]


def storm_rules(rate=FAULT_RATE):
    """One rule per kind, on every route; the first rule that fires answers, so each gets the share that
    makes ``rate`` in all: 1 - (1 - r) ** len(KINDS) == rate."""
    share = 1 - (1 - rate) ** (1 / len(KINDS))
    return [dict(kind, rate=share) for kind in KINDS]


async def test_spawn_storm_under_faults_ends_ready_and_leaves_nothing(os_hub, make_cloud):
    cloud = make_cloud({"boot_delay": 0.2, "quotas": {
        "instances": 20, "cores": 40, "ram": 100000, "floatingip": 20, "port": 100, "volumes": 20, "gigabytes": 100}})
    # more retries than the default: at 20 % a call fails five times in a row once in 3000, and a storm
    # makes a few hundred calls
    app, hub = await os_hub(cloud=cloud, floating_ip_pool="public", api_retries=8, api_timeout=30,
                            boot_timeout=300, notebook_timeout=300)
    for name in USERS:
        hub.token(name)
    async with injected_faults(cloud, storm_rules()) as faults:
        models = await asyncio.gather(*(hub.start_and_wait(name, timeout=600) for name in USERS))
        not_ready = {name: model for name, model in zip(USERS, models) if not (model and model["ready"])}
        assert not not_ready, not_ready
        fired = sum(f["fired"] for f in await faults.fired())
        assert fired >= 20, f"only {fired} faults fired: the storm did not storm"
        # every notebook answers through the proxy
        for name in USERS:
            r = await hub.request("GET", f"user/{name}/api/status", user=name)
            assert r.status_code == 200, (name, r.status_code)
        await asyncio.gather(*(hub.stop_and_wait(name, timeout=300) for name in USERS))
        fired_kinds = [f["fired"] for f in await faults.fired()]
    assert all(fired_kinds), f"every kind of fault fired at least once: {fired_kinds}"
    left = await asyncio.to_thread(footprint, cloud)
    assert left == {"servers": set(), "floating_ips": set(), "ports": set(), "volumes": set()}, left
    conn = cloud.connect()
    data = await asyncio.to_thread(lambda: list(conn.block_storage.volumes()))
    assert sorted(v.metadata["jhub_broker_user"] for v in data) == USERS, "one data volume per user, no more"
    assert all(v.status == "available" for v in data)
