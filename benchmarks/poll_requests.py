"""Cloud API requests per poll round: the OpenStackSpawner's shared ServerCache vs a naive spawner.

One run, side by side, against the real local cloud (``jhub-broker cloud``, VMs disabled so 1000 servers
are cheap, quotas raised, boot_delay 0):

* servers tagged with the hub tag (``jhub-broker-hub-bench``) are created directly through openstacksdk,
  up to 1, 100 and 1000 running;
* **ours**: one ``ServerCache(adapter, tag).refresh()`` — what serves every user's ``poll()`` for one
  interval — with the cloud's request log cleared before and read after;
* **naive**: what the prototype spawners do, one ``GET /servers/{id}`` per server per poll round, made
  for real through the same openstacksdk connection and counted from the same log.

Only compute/network API requests count (the ``/_emulator`` controls are not logged; token requests
would be counted, none happen within a round with a valid token).  The table prints requests per
round and the ratio naive / ours; wall time per round is printed beside it.
Run: ``python benchmarks/poll_requests.py``.
"""
import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import openstack

from jhub_broker.emulators.openstack.launcher import start_cloud_process
from jhub_broker.spawner.cloud import CloudAdapter
from jhub_broker.spawner.lifecycle import hub_tag
from jhub_broker.spawner.servercache import ServerCache

TAG = hub_tag("bench")
COUNTS = (1, 100, 1000)
CLOUD_CONFIG = {
    "vm": {"enabled": False},
    "boot_delay": 0,
    "delete_delay": 0,
    "quotas": {"instances": 2000, "cores": 100000, "ram": 100000000, "volumes": 5000, "gigabytes": 100000,
               "port": 5000},
    # a /20 of loopback addresses: room for 1000 fixed IPs
    "default_network": {"name": "private", "cidr": "127.42.0.0/20"},
}


def create_servers(conn, n, image_id, flavor_id, net_id, start):
    def one(i):
        return conn.compute.create_server(name=f"bench-{start + i:04d}", image_id=image_id, flavor_id=flavor_id,
                                          networks=[{"uuid": net_id}], tags=[TAG]).id
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def wait_active(conn, want):
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        active = [s for s in conn.compute.servers(details=True, tags=TAG) if s.status == "ACTIVE"]
        if len(active) >= want:
            return active
        time.sleep(0.2)
    raise RuntimeError(f"only {len(active)} of {want} servers ACTIVE")


def naive_round(conn, server_ids):
    """A prototype spawner's poll(): each user's spawner asks for its own server."""
    for sid in server_ids:
        conn.compute.get_server(sid)


def main():
    state_dir = tempfile.mkdtemp(prefix="jb-bench-poll-")
    cloud = start_cloud_process(state_dir, CLOUD_CONFIG, log_level="WARNING", timeout=60)
    try:
        conn = openstack.connect(**cloud.connect_kwargs())
        image = conn.image.find_image("ubuntu-24.04-jupyter")
        flavor = conn.compute.find_flavor("m1.small")
        net = conn.network.find_network("private")
        adapter = CloudAdapter(cloud.connect_kwargs(), max_workers=2)
        cache = ServerCache(adapter, TAG)
        asyncio.run(cache.refresh())  # warm: token and catalog of the adapter's connection
        list(conn.compute.servers(details=True, tags=TAG))
        ids = []
        rows = []
        for count in COUNTS:
            ids += create_servers(conn, count - len(ids), image.id, flavor.id, net.id, len(ids))
            wait_active(conn, count)

            cloud.clear_requests()
            t0 = time.perf_counter()
            ok = asyncio.run(cache.refresh())
            ours_s = time.perf_counter() - t0
            ours = cloud.requests()
            assert ok and len(cache.servers) == count, (ok, len(cache.servers))
            assert all(s["status"] == "ACTIVE" for s in cache.servers.values())

            cloud.clear_requests()
            t0 = time.perf_counter()
            naive_round(conn, ids)
            naive_s = time.perf_counter() - t0
            naive = cloud.requests()
            assert len(naive) >= count
            rows.append((count, len(ours), len(naive), len(naive) / max(len(ours), 1), ours_s, naive_s,
                         sorted({f"{r['method']} {r['path'].split('?')[0]}" for r in ours})))
        adapter.executor.shutdown(wait=False)
    finally:
        cloud.stop()

    print("Cloud API requests per poll round (local cloud, servers tagged %s)" % TAG)
    print(f"{'servers':>8} {'ours req/round':>15} {'naive req/round':>16} {'ratio':>8} "
          f"{'ours s/round':>13} {'naive s/round':>14}")
    for count, ours, naive, ratio, ours_s, naive_s, _ in rows:
        print(f"{count:>8} {ours:>15} {naive:>16} {ratio:>7.0f}x {ours_s:>13.3f} {naive_s:>14.3f}")
    print("our requests: " + "; ".join(f"{r[0]} servers: {', '.join(r[6])}" for r in rows))


if __name__ == "__main__":
    main()
