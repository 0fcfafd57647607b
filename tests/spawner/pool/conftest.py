"""A hub whose profiles place notebooks on a shared pool of docker-host VMs in the local cloud."""
import asyncio

import pytest

from jhub_broker.emulators.mockhub import start_hub, stop_hub
from jhub_broker.emulators.openstack.vm import dockerhost
from jhub_broker.spawner.pool.manager import PoolManager
from tests.spawner.conftest import HubClient, spawner_config, wipe_hub_resources

VENV = "/opt/jhub-broker/singleuser"
MiB = 2 ** 20
# m1.small: 1 vCPU, 2048 MB; minus 512 MB reserved -> 1536 MiB: two notebooks of 0.5 vCPU / 700 MiB each
POOL = {"flavor": "m1.small", "image": "debian-docker-host", "read_only_binds": {VENV: VENV},
        "idle_host_timeout": 3600.0, "host_boot_timeout": 240.0}
SHARED = {"slug": "shared", "display_name": "Shared notebook", "placement": "shared", "pool": "small", "image": "jhub-base",
          "cpu_limit": 0.5, "mem_limit": 700 * MiB}

needs_docker = pytest.mark.skipif(not dockerhost.docker_installed(),
                                  reason="Debian's docker.io (dockerd) is not installed: scripts/setup.sh installs it")


async def start_pool_hub(cloud, tmp, pool=None, hub_config=None, **overrides):
    options = dict(profiles=[SHARED], pools={"small": dict(POOL, **(pool or {}))}, pool_ca_dir=str(tmp / "pool-ca"),
                   volume_size=1, notebook_timeout=120)
    options.update(overrides)
    config = spawner_config(cloud, **options)
    for section, values in (hub_config or {}).items():
        for key, value in values.items():
            setattr(config[section], key, value)
    app = await start_hub(config)
    return app, HubClient(app)


async def stop_pool_hub(app):
    PoolManager.stop_all()
    await stop_hub(app)


@pytest.fixture(scope="module")
async def pool_hub(local_cloud, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    app, hub = await start_pool_hub(local_cloud, tmp)
    hub.tmp = tmp
    yield app, hub
    await stop_pool_hub(app)
    await asyncio.to_thread(wipe_hub_resources, local_cloud)


def pool_manager(app, pool="small"):
    """This hub's manager of ``pool``: managers of hubs stopped earlier in the same process (another test module
    on this worker) may still be registered, so pick by this hub's lifecycle (its cloud adapter and hub id)."""
    spawner = next(iter(app.users.values())).spawner
    (mgr,) = [m for m in PoolManager.of(spawner.lifecycle) if m.config.name == pool]
    return mgr


def pool_hosts(cloud, pool="small"):
    conn = cloud.connect()
    return [s for s in conn.compute.servers(details=True, tags=f"jhub-broker-pool-{pool}")]
