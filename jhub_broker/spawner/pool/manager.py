"""PoolManager: one per (cloud, hub, pool) in the hub process, the only writer of the pool's state.

It boots hosts (servers tagged with the hub tag and the pool tag, metadata naming the pool), hands each
its dockerd certificate through the bootstrap exchange once its address is known, keeps the reservations
of the notebooks on each host, places new notebooks by bin-packing (packing.py) and deletes hosts that
stayed empty for ``idle_host_timeout`` while more than ``headroom`` free slots remain.

What it needs after a hub restart lives in the cloud, not only in memory: hosts are found by their pool
tag, notebooks by their containers' labels (``adopt``).
"""
import asyncio
import logging
import secrets
import time

from jupyterhub.spawner import SpawnException

from .. import bootstrap
from ..cloud import CloudError
from ..lifecycle import POOL_TAG_PREFIX
from ..messages import advice, clip
from ..reaper import Reaper
from . import docker as pooldocker
from . import hostdata, packing
from .certs import PoolCA

log = logging.getLogger("jhub_broker.spawner.pool")



def pool_tag(name):
    return POOL_TAG_PREFIX + name


class Host:
    def __init__(self, server_id, name, capacity, number):
        self.server_id = server_id
        self.name = name
        self.number = number
        self.capacity = capacity
        self.address = None
        self.client = None
        self.reservations = {}  # owner -> (packing.Need, port)
        self.ready = asyncio.get_running_loop().create_future()
        self.empty_since = time.monotonic()
        self.deleting = False

    def ports(self):
        return {port for _, port in self.reservations.values()}


class PoolManager:
    _instances = {}

    def __init__(self, spawner, config):
        self.config = config
        self.lifecycle = spawner.lifecycle
        self.adapter = spawner.adapter
        self.hub_id = spawner.hub_id
        self.tag = pool_tag(config.name)
        self.ca = PoolCA(spawner.pool_ca_dir, spawner.hub_id)
        self.hosts = {}  # server id -> Host
        self.lock = asyncio.Lock()
        self._numbers = 0
        self._cache_fn = spawner._cache
        self._sg = (spawner.manage_security_group, spawner._allowed_cidrs)
        self._bootstrap_url = spawner._bootstrap_url
        self._networks = spawner.networks
        self._security_groups = list(spawner.security_groups)
        self._adopted = None
        self._task = None
        self._boots = set()  # tasks finishing host boots
        self.starting = set()  # owners whose container this process is starting (no saved state yet)
        self.log = spawner.log

    @classmethod
    def shared(cls, spawner, config):
        key = (id(spawner.adapter), spawner.hub_id, config.name)
        mgr = cls._instances.get(key)
        if mgr is None or mgr._loop_gone():
            mgr = cls._instances[key] = cls(spawner, config)
        mgr.config = config
        mgr._ensure_loop()
        return mgr

    @classmethod
    def of(cls, lifecycle):
        """The pool managers working with this lifecycle (cloud and hub)."""
        return [m for m in cls._instances.values() if m.lifecycle is lifecycle]

    @classmethod
    def stop_all(cls):
        for mgr in cls._instances.values():
            for task in [mgr._task, *mgr._boots]:
                if task is not None:
                    task.cancel()
        cls._instances.clear()

    def _loop_gone(self):
        return self._task is not None and (self._task.get_loop().is_closed() or self._task.done())

    def _ensure_loop(self):
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._scale_down_loop())

    # -- adoption ------------------------------------------------------------------------------
    async def adopt(self):
        """Once per manager: take over the pool's running hosts and their notebook containers."""
        if self._adopted is None:
            self._adopted = asyncio.get_running_loop().create_task(self._adopt())
        await asyncio.shield(self._adopted)

    async def _adopt(self):
        tag = self.tag

        def listing(conn):
            return [(s.id, s.name, s.status, s.addresses or {}, dict(s.metadata or {}))
                    for s in conn.compute.servers(details=True, tags=tag)]
        flavor = await self.lifecycle.flavor(self.config.flavor)
        capacity = packing.Capacity.of_flavor(flavor, self.config.reserved_ram_mb, self.config.cpu_overcommit)
        for sid, name, status, addresses, meta in await self.adapter.run(listing):
            if meta.get("jhub_broker_hub") != self.hub_id or status != "ACTIVE" or sid in self.hosts:
                continue
            host = self._new_host(sid, name, capacity)
            host.address = self.lifecycle.fixed_ip({"addresses": addresses})
            host.client = pooldocker.client_for(host.address, self.config.docker_port, self.ca.ca_path,
                                                self.ca.client_paths)
            try:
                containers = await pooldocker.call(host.client, "containers", all=True,
                                                   filters={"label": f"{pooldocker.LABEL}.pool={self.config.name}"})
            except Exception as e:  # noqa: BLE001 - a host not answering is left to the reaper
                self.log.warning("pool %s: host %s does not answer its Docker API (%s); not adopted",
                                 self.config.name, name, e)
                del self.hosts[sid]
                continue
            for c in containers:
                labels = c.get("Labels") or {}
                owner = labels.get(f"{pooldocker.LABEL}.owner")
                if owner:
                    need = packing.Need(float(labels.get(f"{pooldocker.LABEL}.cpu", 0)),
                                        int(labels.get(f"{pooldocker.LABEL}.mem", 0)))
                    host.reservations[owner] = (need, int(labels.get(f"{pooldocker.LABEL}.port", 0)))
            host.ready.set_result(host)
            self.log.info("pool %s: adopted host %s (%s) with %d notebooks", self.config.name, name, host.address,
                          len(host.reservations))

    # -- orphans (called by the reaper) ------------------------------------------------------------
    async def reap(self, owned, grace, age_of):
        """Remove notebook containers no saved spawner state names, and hosts that never came up.

        ``owned``: {(host id, container name)} from every spawner's state; ``age_of(created)``: seconds.
        A removed container's volume is detached, so its user can start anywhere again.
        """
        await self.adopt()
        removed = {"containers": [], "hosts": []}
        label = f"{pooldocker.LABEL}.pool={self.config.name}"
        for host in list(self.hosts.values()):
            if not host.ready.done() or host.ready.exception() or host.deleting:
                continue
            try:
                containers = await pooldocker.call(host.client, "containers", all=True, filters={"label": label})
            except Exception as e:  # noqa: BLE001 - next round
                self.log.warning("pool %s: cannot list containers on %s: %s", self.config.name, host.name, e)
                continue
            for c in containers:
                name = (c.get("Names") or ["/"])[0].lstrip("/")
                labels = c.get("Labels") or {}
                owner = labels.get(f"{pooldocker.LABEL}.owner")
                if (host.server_id, name) in owned or owner in self.starting:
                    continue
                self.log.warning("reaper: removing orphaned notebook container %s on pool host %s", name, host.name)
                await pooldocker.call(host.client, "remove_container", c["Id"], force=True)
                volume = labels.get(f"{pooldocker.LABEL}.volume")
                if volume:
                    try:
                        await self.lifecycle.detach_volume(host.server_id, volume)
                    except Exception as e:  # noqa: BLE001
                        self.log.error("reaper: could not detach volume %s from %s: %s", volume, host.name, e)
                if owner and owner in host.reservations:
                    self.release(owner)
                removed["containers"].append(name)
        tag = self.tag

        def listing(conn):
            return [(s.id, s.name, s.created_at) for s in conn.compute.servers(details=True, tags=tag)
                    if (s.metadata or {}).get("jhub_broker_hub") == self.hub_id]
        for sid, name, created in await self.adapter.run(listing):
            if sid in self.hosts or sid in Reaper.in_flight or age_of(created) < grace:
                continue
            # in the cloud, not adopted (its dockerd never answered the hub): a boot the hub did not finish
            self.log.warning("reaper: deleting pool host %s (%s) that never came up for this hub", name, sid)
            await self.lifecycle.delete_server(sid)
            removed["hosts"].append(sid)
        return removed

    def _new_host(self, sid, name, capacity):
        self._numbers += 1
        host = self.hosts[sid] = Host(sid, name, capacity, self._numbers)
        return host

    # -- placement -----------------------------------------------------------------------------
    async def place(self, owner, need, progress):
        """Reserve room for ``owner`` on the fullest host that fits; boot a host when none does.

        Returns the ready Host and the notebook's port on it.
        """
        await self.adopt()
        flavor = await self.lifecycle.flavor(self.config.flavor)
        capacity = packing.Capacity.of_flavor(flavor, self.config.reserved_ram_mb, self.config.cpu_overcommit)
        if capacity.slots(need) < 1:
            raise SpawnException(
                f"This profile asks for more ({need.cpu:g} vCPU, {need.mem // packing.MiB} MiB) than a host of pool "
                f"{self.config.name!r} ({flavor['name']}) offers to notebooks: tell the hub's administrators.",
                reason="pool")
        async with self.lock:
            self.release(owner)
            self.last_need = need
            candidates = {h.server_id: (h.capacity, [n for n, _ in h.reservations.values()])
                          for h in self.hosts.values() if self._usable(h)}
            chosen = packing.choose(candidates, need)
            if chosen is None:
                live = [h for h in self.hosts.values() if not h.deleting]
                if len(live) >= self.config.max_hosts:
                    raise SpawnException(
                        f"The shared pool {self.config.name!r} is full: its {self.config.max_hosts} hosts (max_hosts) "
                        f"have no room for another notebook. Try again when someone stops theirs, choose another "
                        f"profile, or ask the hub's administrators to raise max_hosts.", reason="pool")
                host = await self._boot(capacity)
                progress(15, f"No host of pool {self.config.name} has room: booting host {host.number} ({host.name})")
            else:
                host = self.hosts[chosen]
            port = self._free_port(host)
            host.reservations[owner] = (need, port)
            host.empty_since = None
            await self._keep_headroom(capacity, need)
        if not host.ready.done():
            progress(20, f"Waiting for host {host.number} ({host.name}) to boot")
        try:
            await asyncio.shield(host.ready)
        except Exception:
            self.release(owner)
            raise
        progress(40, f"Placed on host {host.number} ({host.name}, {host.address})")
        return host, port

    async def _keep_headroom(self, capacity, need):
        """Boot one more host (not waited for) when fewer than ``headroom`` slots of ``need`` stay free, so the
        next starts find room at once. Under the lock; a failure here fails no spawn."""
        if self.config.headroom <= 0:
            return
        free = sum(packing.Capacity(h.capacity.cpu - packing.used([n for n, _ in h.reservations.values()]).cpu,
                                    h.capacity.mem - packing.used([n for n, _ in h.reservations.values()]).mem
                                    ).slots(need) for h in self.hosts.values() if self._usable(h))
        live = [h for h in self.hosts.values() if not h.deleting]
        if free >= self.config.headroom or len(live) >= self.config.max_hosts:
            return
        try:
            host = await self._boot(capacity)
            self.log.info("pool %s: booting host %s to keep %d free slots", self.config.name, host.name,
                          self.config.headroom)
        except SpawnException as e:
            self.log.warning("pool %s: could not boot a host for headroom: %s", self.config.name, e)

    @staticmethod
    def _usable(host):
        # a host still booting takes reservations: its notebooks wait for it
        return not host.deleting and not (host.ready.done() and host.ready.exception())

    def _free_port(self, host):
        used = host.ports()
        port = self.config.port_base
        while port in used:
            port += 1
        return port

    def release(self, owner):
        for host in self.hosts.values():
            if host.reservations.pop(owner, None) is not None and not host.reservations:
                host.empty_since = time.monotonic()

    def host(self, server_id):
        return self.hosts.get(server_id)

    async def host_for_state(self, server_id):
        """The Host of a saved notebook state (adopting after a restart), or None when it is gone."""
        await self.adopt()
        host = self.hosts.get(server_id)
        if host is not None and host.ready.done() and not host.ready.exception():
            return host
        return None

    # -- booting a host --------------------------------------------------------------------------
    async def _boot(self, capacity):
        """Create the host's server (under the lock, so max_hosts holds); the rest runs in the background."""
        lc = self.lifecycle
        name = f"jhub-pool-{self.hub_id}-{self.config.name}-{secrets.token_hex(3)}"
        image = await lc.image(self.config.image)
        flavor = await lc.flavor(self.config.flavor)
        network_ids = await lc.network_ids(self._networks)
        groups = list(self._security_groups)
        manage, cidrs = self._sg
        if manage:
            # the hub (only) reaches dockerd and the notebooks' ports
            slots = capacity.slots(self.last_need)
            for port in [self.config.docker_port] + list(range(self.config.port_base, self.config.port_base + slots)):
                group = await lc.ensure_security_group(port, cidrs())
            groups.append(group)
        owner = f"pool:{self.config.name}:{name}"
        secret = bootstrap.registry.issue(owner, {}, ttl=self.config.host_boot_timeout, held=True)
        user_data = hostdata.render(self._bootstrap_url(), secret, self.config.host_boot_timeout)
        meta = {"jhub_broker_hub": self.hub_id, "jhub_broker_pool": self.config.name}
        try:
            sid = await lc.create_server(
                name=name, image_id=image["id"], flavor_id=flavor["id"], network_ids=network_ids,
                security_groups=groups, user_data=user_data, metadata=meta,
                tags=[lc.tag, self.tag], key_name=None, availability_zone=None, volume_id=None)
        except Exception as e:
            bootstrap.registry.revoke(owner)
            raise SpawnException(self._boot_failed(name, e), reason="pool") from None
        Reaper.in_flight.add(sid)
        host = self._new_host(sid, name, capacity)
        host.empty_since = None
        task = asyncio.get_running_loop().create_task(self._finish_boot(host, owner))
        self._boots.add(task)
        task.add_done_callback(self._boots.discard)
        return host

    def _boot_failed(self, name, e):
        text = e.message if isinstance(e, CloudError) else str(getattr(e, "details", None) or e)
        return (f"Booting host {name} for the shared pool {self.config.name!r} failed: {clip(text, 500)} "
                f"{advice(e, text)}")

    async def _finish_boot(self, host, owner):
        try:
            await asyncio.wait_for(self._bring_up(host, owner), self.config.host_boot_timeout)
        except Exception as e:  # noqa: BLE001 - every waiter gets the reason
            if isinstance(e, asyncio.TimeoutError):
                last = getattr(host, "last_error", None)
                tail = await self.lifecycle.console_tail(host.server_id, 15)
                e = CloudError(f"the host was not ready within {self.config.host_boot_timeout:.0f} s"
                               + (f" (its Docker API: {clip(last, 300)})" if last else "")
                               + (f". Last lines of the host's console:\n{tail}" if tail else ""))
            self.log.error("pool %s: host %s failed: %s", self.config.name, host.name, e)
            bootstrap.registry.revoke(owner)
            if not host.ready.done():
                host.ready.set_exception(SpawnException(self._boot_failed(host.name, e), reason="pool"))
                host.ready.exception()  # retrieved: no "never retrieved" warning when nobody waits
            await self._delete(host)
        finally:
            Reaper.in_flight.discard(host.server_id)

    async def _bring_up(self, host, owner):
        lc = self.lifecycle
        entry = await self._cache().wait_for(host.server_id, lambda e: e is not None and e["status"] in
                                             ("ACTIVE", "ERROR"), timeout=self.config.host_boot_timeout)
        if entry["status"] == "ERROR":
            fault = entry.get("fault") or await lc.server_fault(host.server_id) or "no reason given"
            raise CloudError(f"the cloud could not boot it: {fault}")
        host.address = lc.fixed_ip(entry)
        if not host.address:
            raise CloudError("the host has no IPv4 address on its network")
        tls = await asyncio.to_thread(self.ca.server_pair, host.name, host.address)
        bootstrap.registry.release(owner, docker_tls=tls, address=host.address, docker_port=self.config.docker_port,
                                   image=self.config.container_image, image_tar=self.config.container_image_tar)
        host.client = pooldocker.client_for(host.address, self.config.docker_port, self.ca.ca_path,
                                            self.ca.client_paths)
        while True:  # dockerd answering, with our CA, and the image imported
            try:
                await pooldocker.call(host.client, "inspect_image", self.config.container_image)
                break
            except Exception as e:  # noqa: BLE001 - not up yet
                host.last_error = e
                await asyncio.sleep(0.5)
        self.log.info("pool %s: host %s ready at %s", self.config.name, host.name, host.address)
        if not host.reservations:  # booted for headroom: idle from now on
            host.empty_since = time.monotonic()
        host.ready.set_result(host)

    # -- shrinking -------------------------------------------------------------------------------
    async def _scale_down_loop(self):
        while True:
            await asyncio.sleep(max(1.0, min(30.0, self.config.idle_host_timeout / 4)))
            try:
                await self.scale_down()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - next round
                self.log.warning("pool %s: scale-down failed: %s", self.config.name, e)

    async def scale_down(self):
        """Delete hosts empty for idle_host_timeout, keeping ``headroom`` free slots; never a busy host."""
        now = time.monotonic()
        async with self.lock:
            ready = [h for h in self.hosts.values() if h.ready.done() and not h.ready.exception() and not h.deleting]
            slot = self._typical_need()
            rows = []
            for h in ready:
                free = packing.Capacity(h.capacity.cpu - packing.used([n for n, _ in h.reservations.values()]).cpu,
                                        h.capacity.mem - packing.used([n for n, _ in h.reservations.values()]).mem)
                idle = not h.reservations and h.empty_since is not None and \
                    now - h.empty_since >= self.config.idle_host_timeout
                rows.append((h.server_id, free.slots(slot) if slot else 0, idle))
            doomed = [self.hosts[sid] for sid in packing.removable_hosts(rows, self.config.headroom)]
            for h in doomed:
                h.deleting = True
        for h in doomed:
            self.log.info("pool %s: deleting host %s, empty for %.0f s", self.config.name, h.name,
                          now - h.empty_since)
            await self._delete(h)
        return [h.server_id for h in doomed]

    def _typical_need(self):
        for h in self.hosts.values():
            for need, _ in h.reservations.values():
                return need
        return getattr(self, "last_need", None)

    async def _delete(self, host):
        host.deleting = True
        try:
            await self.lifecycle.delete_server(host.server_id, timeout=180)
        except Exception as e:  # noqa: BLE001 - the reaper retries
            self.log.error("pool %s: could not delete host %s: %s", self.config.name, host.name, e)
        self.hosts.pop(host.server_id, None)
        if host.client is not None:
            host.client.close()

    def _cache(self):
        return self._cache_fn()
