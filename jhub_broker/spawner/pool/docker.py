"""Docker on the pool's hosts: one API client per host (mutual TLS), the notebook container via dockerspawner.

DockerSpawner holds one class-wide client; here each host has its own, so ``PoolContainer`` (a DockerSpawner)
is made per start/stop with the host's client and drives create/start/inspect/stop/remove exactly as
DockerSpawner does. What the notebook gets:

- ``--network host`` on the host's fixed address, a port of its own (no bridge, no published ports);
- CPU and memory limits (Docker's cgroups); ``cap_drop ALL`` and ``no-new-privileges``: the notebook runs
  as uid 1000 and needs no capability; without ``NET_RAW`` it cannot sniff the host's network;
- its environment (API token included) as a VM gets it, only in the container's own config, which only
  the Docker API (the hub) can read; labels carry only hub, pool, user, server and port.
"""
import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import docker
from dockerspawner import DockerSpawner
from traitlets import Dict, Unicode

API_VERSION = "1.41"  # docker.io 20.10; "auto" would cost a round trip per client
LABEL = "jhub_broker"  # label prefix: jhub_broker.hub, .pool, .user, .server, .port

_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pool-docker")


def client_for(address, port, ca_path, client_paths, timeout=30):
    """A docker-py APIClient for one host's dockerd, with the hub's client certificate."""
    tls = docker.tls.TLSConfig(client_cert=client_paths, ca_cert=ca_path, verify=True)
    client = docker.APIClient(base_url=f"https://{address}:{port}", version=API_VERSION, timeout=timeout, tls=tls)
    # requests would replace the pool CA with REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the hub's environment
    client.trust_env = False
    return client


async def call(client, method, *args, **kwargs):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, lambda: getattr(client, method)(*args, **kwargs))


class PoolContainer(DockerSpawner):
    """DockerSpawner bound to one host's client; the hub's OpenStackSpawner computes env and command."""

    fixed_env = Dict()
    fixed_cmd = Dict()  # {"argv": [...]}
    host_address = Unicode()

    _local = threading.local()

    def __init__(self, host_client, **kwargs):
        self._host_client = host_client
        super().__init__(**kwargs)

    @property
    def client(self):
        return self._host_client

    @property
    def executor(self):
        return _executor

    def get_env(self):
        return dict(self.fixed_env)

    async def get_command(self):
        return list(self.fixed_cmd["argv"])

    async def get_ip_and_port(self):
        return self.host_address, self.port


def container_kwargs(*, name, image, address, port, env, argv, labels, cpu_limit, mem_limit, binds, user="1000:1000"):
    """Traits of a PoolContainer for one notebook."""
    return dict(
        name_template=name, image=image, host_address=address, port=port, fixed_env=env, fixed_cmd={"argv": argv},
        network_name="host", use_internal_ip=True, remove=True, pull_policy="never",
        cpu_limit=cpu_limit, mem_limit=mem_limit, volumes=binds,
        extra_create_kwargs={"labels": labels, "user": user, "working_dir": "/home/jovyan"},
        extra_host_config={"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "network_mode": "host",
                           "memswap_limit": mem_limit, "pids_limit": 1024},
    )
