"""One pool's settings, read from ``c.OpenStackSpawner.pools[name]`` and checked with messages that say what to fix."""
from dataclasses import dataclass, field

DEFAULTS = {
    "flavor": None,  # required: every host of the pool has this flavor
    "image": "debian-docker-host",  # VM image with dockerd (and python3) installed
    "headroom": 0,  # free notebook slots kept ready so the next starts need no boot
    "idle_host_timeout": 600.0,  # seconds a host may stay empty before it is deleted (down to headroom)
    "max_hosts": 10,
    "reserved_ram_mb": 512,  # RAM of a host not given to notebooks (dockerd, containerd, shims, agent)
    "cpu_overcommit": 1.0,  # vCPU reservations allowed per host vCPU
    "docker_port": 2376,
    "port_base": 9000,  # the first notebook's port on a host; each container gets its own
    "container_image": "jhub-base",  # default when a profile names none
    "container_image_tar": "/opt/jhub-broker/container-images/jhub-base.tar",  # imported when dockerd lacks the image
    "read_only_binds": {},  # host path -> container path, e.g. the host's pre-baked single-user venv
    "singleuser_cmd": "/opt/jhub-broker/singleuser/bin/jupyterhub-singleuser",
    "host_boot_timeout": 600.0,  # seconds for a new host: ACTIVE, dockerd answering, image imported
}


@dataclass(frozen=True)
class PoolConfig:
    name: str
    flavor: str
    image: str
    headroom: int
    idle_host_timeout: float
    max_hosts: int
    reserved_ram_mb: int
    cpu_overcommit: float
    docker_port: int
    port_base: int
    container_image: str
    container_image_tar: str
    read_only_binds: dict = field(default_factory=dict)
    singleuser_cmd: str = DEFAULTS["singleuser_cmd"]
    host_boot_timeout: float = 600.0

    @classmethod
    def from_dict(cls, name, values):
        unknown = set(values) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"c.OpenStackSpawner.pools[{name!r}] has unknown keys {sorted(unknown)}; "
                             f"known: {sorted(DEFAULTS)}")
        merged = dict(DEFAULTS, **values)
        if not merged["flavor"]:
            raise ValueError(f"c.OpenStackSpawner.pools[{name!r}] needs a 'flavor' (the hosts' flavor)")
        for key in ("headroom", "max_hosts", "reserved_ram_mb", "docker_port", "port_base"):
            if not isinstance(merged[key], int) or merged[key] < 0:
                raise ValueError(f"c.OpenStackSpawner.pools[{name!r}][{key!r}] must be an integer >= 0")
        if merged["max_hosts"] < 1:
            raise ValueError(f"c.OpenStackSpawner.pools[{name!r}]['max_hosts'] must be at least 1")
        return cls(name=name, **merged)
