"""The shared placement's start/stop/poll for one OpenStackSpawner: a container on a pool host.

start: profile -> pool -> reservation on the fullest host that fits (booting one if needed) -> the user's
data volume attached to that host -> the container (PoolContainer, a DockerSpawner) -> the notebook
answering. The user's volume is the dedicated placement's (same name and metadata), so files follow the
user between hosts and between placements.
"""
import asyncio

from jupyterhub.spawner import SpawnException
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from ..cloud import CloudError
from ..userdata import volume_device
from . import docker as pooldocker
from .config import PoolConfig
from .manager import PoolManager
from .packing import Need

HOME = "/home/jovyan"
STATE_KEYS = ("pool", "host_id", "host_address", "port", "container")


def pool_config(spawner, name):
    pools = spawner.pools or {}
    if name not in pools:
        raise SpawnException(f"The profile's pool {name!r} is not configured (c.OpenStackSpawner.pools): tell the "
                             f"hub's administrators.", reason="config")
    try:
        return PoolConfig.from_dict(name, pools[name])
    except ValueError as e:
        raise SpawnException(f"{e}: tell the hub's administrators.", reason="config") from None


def managers(spawner):
    """The manager of every configured pool (made now if no spawn needed one yet, e.g. after a restart)."""
    out = []
    for name in sorted(spawner.pools or {}):
        try:
            out.append(PoolManager.shared(spawner, PoolConfig.from_dict(name, spawner.pools[name])))
        except ValueError as e:
            spawner.log.error("pool %s is misconfigured: %s", name, e)
    return out


class SharedPlacement:
    def __init__(self, spawner, profile=None, pool=None):
        self.spawner = spawner
        self.profile = profile
        self.config = pool_config(spawner, pool or profile.pool)
        self.manager = PoolManager.shared(spawner, self.config)

    @property
    def owner(self):
        return f"{self.spawner.user.name}/{self.spawner.name}"

    def _container_name(self):
        sp = self.spawner
        return f"jupyter-{sp.hub_id}-{sp.user.name}{sp._servername_suffix}".replace("@", "-")[:200]

    def _container(self, host, port, **extra):
        sp = self.spawner
        return pooldocker.PoolContainer(host.client, user=sp.user, hub=sp.hub, log=sp.log, db=sp.db,
                                        **pooldocker.container_kwargs(name=self._container_name(), address=host.address,
                                                                      port=port, **extra))

    async def start(self):
        sp, cfg = self.spawner, self.config
        need = Need(float(self.profile.cpu_limit), int(self.profile.mem_limit))
        sp._progress(5, f"Placing your notebook in the shared pool {cfg.name}")
        if sp.volume_size > 0:
            sp.volume_id, _ = await sp.lifecycle.ensure_volume(
                sp.volume_id, sp._volume_name(), sp.volume_size, sp._resource_metadata(),
                sp.volume_type or None, sp.availability_zone or None, timeout=sp.volume_timeout)
        self.manager.starting.add(self.owner)
        try:
            return await self._start(need)
        finally:
            self.manager.starting.discard(self.owner)

    async def _start(self, need):
        sp, cfg = self.spawner, self.config
        host, port = await self.manager.place(self.owner, need, sp._progress)
        sp.pool, sp.host_id, sp.host_address, sp.port_on_host = cfg.name, host.server_id, host.address, port
        sp.container = self._container_name()
        binds = {src: {"bind": dst, "mode": "ro"} for src, dst in cfg.read_only_binds.items()}
        try:
            if sp.volume_id:
                sp._progress(50, "Attaching your volume")
                await sp.lifecycle.attach_volume(host.server_id, sp.volume_id, timeout=sp.volume_timeout)
                binds[volume_device(sp.volume_id)] = {"bind": HOME, "mode": "rw"}
            sp._progress(65, "Starting your container")
            env = sp.get_env()
            base_url = sp.server.base_url if sp.server else "/"
            env.update({"JUPYTERHUB_SERVICE_URL": f"http://{host.address}:{port}{base_url}", "HOME": HOME,
                        "USER": "jovyan", "LANG": "C.UTF-8", "SHELL": "/bin/bash",
                        "PATH": "/opt/jhub-broker/singleuser/bin:/usr/local/bin:/usr/bin:/bin"})
            argv = [cfg.singleuser_cmd, f"--ip={host.address}", f"--port={port}", f"--notebook-dir={HOME}"] + \
                list(sp.args)
            labels = {f"{pooldocker.LABEL}.hub": sp.hub_id, f"{pooldocker.LABEL}.pool": cfg.name,
                      f"{pooldocker.LABEL}.owner": self.owner, f"{pooldocker.LABEL}.port": str(port),
                      f"{pooldocker.LABEL}.cpu": str(float(self.profile.cpu_limit)),
                      f"{pooldocker.LABEL}.mem": str(int(self.profile.mem_limit)),
                      f"{pooldocker.LABEL}.volume": sp.volume_id or ""}
            image = self.profile.image or cfg.container_image
            if sp.volume_id:
                await self._own_home(host, image, binds)
            container = self._container(host, port, image=image, env=env, argv=argv, labels=labels,
                                        cpu_limit=float(self.profile.cpu_limit), mem_limit=int(self.profile.mem_limit),
                                        binds=binds)
            await container.start()
            sp._progress(85, "Container started; waiting for the notebook server")
            await self._wait_answering(host.address, port, base_url)
        except BaseException:
            await asyncio.shield(self.stop())
            raise
        sp._progress(100, "Notebook server is answering")
        return host.address, port

    async def _own_home(self, host, image, binds):
        """A fresh volume's root belongs to root: hand it to jovyan (uid 1000) once, in a throwaway container
        holding only CAP_CHOWN, without network."""
        src = next(s for s, b in binds.items() if b["bind"] == HOME)
        script = f'[ "$(stat -c %u {HOME})" = 1000 ] || chown 1000:1000 {HOME}'
        cid = (await pooldocker.call(host.client, "create_container", image, ["sh", "-c", script],
                                     host_config=host.client.create_host_config(
                                         binds={src: {"bind": HOME, "mode": "rw"}}, network_mode="none",
                                         cap_drop=["ALL"], cap_add=["CHOWN"], security_opt=["no-new-privileges"])))["Id"]
        try:
            await pooldocker.call(host.client, "start", cid)
            result = await pooldocker.call(host.client, "wait", cid, timeout=60)
            if result.get("StatusCode"):
                raise CloudError("could not prepare your home directory on the volume")
        finally:
            await pooldocker.call(host.client, "remove_container", cid, force=True)

    async def _wait_answering(self, address, port, base_url):
        url = f"http://{address}:{port}{base_url}api"
        client = AsyncHTTPClient()
        deadline = asyncio.get_running_loop().time() + self.spawner.notebook_timeout
        while True:
            try:
                await client.fetch(url, request_timeout=5, follow_redirects=False)
                return
            except HTTPClientError as e:
                if e.code != 599:
                    return
            except OSError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise CloudError(f"The notebook in your container did not answer within "
                                 f"{self.spawner.notebook_timeout:.0f} s.")
            await asyncio.sleep(0.2)

    async def poll(self):
        sp = self.spawner
        host = await self.manager.host_for_state(sp.host_id)
        if host is None:
            return 1
        try:
            info = await pooldocker.call(host.client, "inspect_container", sp.container)
        except Exception as e:  # noqa: BLE001
            if getattr(getattr(e, "response", None), "status_code", None) == 404:
                return 1
            return None  # the host not answering is no evidence the notebook is gone
        if host.reservations.get(self.owner) is None:  # adopted before this spawner looked
            host.reservations[self.owner] = (Need(float(info["Config"]["Labels"].get(f"{pooldocker.LABEL}.cpu", 0)),
                                                  int(info["Config"]["Labels"].get(f"{pooldocker.LABEL}.mem", 0))),
                                             sp.port_on_host)
        return None if info["State"]["Running"] else 1

    async def stop(self):
        sp = self.spawner
        host = self.manager.host(sp.host_id) if sp.host_id else None
        try:
            if host is not None and host.client is not None and sp.container:
                try:
                    await pooldocker.call(host.client, "remove_container", sp.container, force=True)
                except Exception as e:  # noqa: BLE001
                    if getattr(getattr(e, "response", None), "status_code", None) != 404:
                        raise
            if host is not None and sp.volume_id:
                await sp.lifecycle.detach_volume(host.server_id, sp.volume_id, timeout=sp.volume_timeout)
        finally:
            self.manager.release(self.owner)
            sp.pool = sp.host_id = sp.host_address = sp.port_on_host = sp.container = None
