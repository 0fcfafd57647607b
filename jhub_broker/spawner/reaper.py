"""Finds this hub's cloud resources that no user owns any more, and removes them.

A server, floating IP or volume carries the hub's tag/metadata; it is an
orphan when no spawner state in the hub's database names it, no spawn in
this process is creating it, and it is older than ``reaper_grace``.  Volumes
are removed only when their user no longer exists in the hub.
"""
import asyncio
import datetime
import json
import logging

from jupyterhub import orm

from .lifecycle import POOL_TAG_PREFIX

log = logging.getLogger("jhub_broker.spawner.reaper")


def _age_seconds(created):
    if not created:
        return float("inf")
    try:
        ts = datetime.datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=datetime.timezone.utc)
    return (datetime.datetime.now(datetime.timezone.utc) - ts).total_seconds()


class Reaper:
    in_flight = set()  # server ids being created by spawns of this process
    _tasks = {}

    def __init__(self, spawner):
        self.lifecycle = spawner.lifecycle
        self.db = spawner.db
        self.interval = spawner.reaper_interval
        self.log = spawner.log
        self.grace = self.grace_for(spawner)
        self.spawner = spawner  # names the shared pools to sweep (a hub restarted with no user yet on one)

    @staticmethod
    def grace_for(spawner):
        """The configured grace, never shorter than the longest spawn: after a hub
        restart a server still booting is in no spawner's state and in no in-flight set."""
        least = spawner.boot_timeout + spawner.notebook_timeout
        if spawner.reaper_grace < least:
            spawner.log.warning("reaper_grace %.0f s is shorter than a spawn may take (boot_timeout + "
                                "notebook_timeout): using %.0f s", spawner.reaper_grace, least)
            return least
        return spawner.reaper_grace

    @classmethod
    def ensure(cls, spawner):
        key = (id(spawner.adapter), spawner.hub_id)
        task = cls._tasks.get(key)
        if task is None or task.done():
            reaper = cls(spawner)
            cls._tasks[key] = asyncio.get_running_loop().create_task(reaper.run())

    @classmethod
    def stop_all(cls):
        for task in cls._tasks.values():
            task.cancel()
        cls._tasks.clear()

    async def run(self):
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - next round tries again
                self.log.warning("reaper sweep failed: %s", e)

    def _owned(self):
        servers, fips, users = set(), set(), set()
        self.containers = set()  # (pool host id, container name) of shared-placement notebooks
        self.db.expire_all()
        for sp in self.db.query(orm.Spawner):
            state = sp.state or {}
            if isinstance(state, str):
                state = json.loads(state)
            if state.get("server_id"):
                servers.add(state["server_id"])
            if state.get("floating_ip_id"):
                fips.add(state["floating_ip_id"])
            if state.get("host_id") and state.get("container"):
                self.containers.add((state["host_id"], state["container"]))
        for u in self.db.query(orm.User):
            users.add(u.name)
        return servers, fips, users

    async def sweep(self):
        """One pass; returns what was removed, as {"servers": [...], "floating_ips": [...], "volumes": [...]}."""
        lc = self.lifecycle
        tag, hub_id = lc.tag, lc.hub_id
        owned_servers, owned_fips, users = self._owned()
        grace = self.grace

        def listing(conn):
            # shared-pool hosts belong to their pool's manager (it deletes idle ones), not to a user
            servers = [(s.id, s.name, s.created_at) for s in conn.compute.servers(details=True, tags=tag)
                       if not any(t.startswith(POOL_TAG_PREFIX) for t in (s.tags or []))]
            # tagged, or made by this hub but not tagged yet (the hub stopped between create and tag)
            mark = lc.fip_mark
            fips = [(f.id, f.floating_ip_address, f.created_at, f.port_id) for f in conn.network.ips()
                    if tag in (f.tags or []) or (f.description or "").startswith(mark)]
            vols = [(v.id, v.name, v.created_at, (v.metadata or {}).get("jhub_broker_user"), v.status)
                    for v in conn.block_storage.volumes(details=True)
                    if (v.metadata or {}).get("jhub_broker_hub") == hub_id]
            return servers, fips, vols

        servers, fips, vols = await lc.adapter.run(listing)
        removed = {"servers": [], "floating_ips": [], "volumes": []}
        for sid, name, created in servers:
            if sid in owned_servers or sid in self.in_flight or _age_seconds(created) < grace:
                continue
            self.log.warning("reaper: deleting orphaned server %s (%s), no user owns it", name, sid)
            await lc.delete_server(sid)
            removed["servers"].append(sid)
        for fid, addr, created, port_id in fips:
            if fid in owned_fips or _age_seconds(created) < grace:
                continue
            self.log.warning("reaper: releasing orphaned floating IP %s (%s)", addr, fid)
            await lc.release_floating_ip(fid)
            removed["floating_ips"].append(fid)
        for vid, name, created, user, status in vols:
            if not user or user in users or status not in ("available", "error"):
                continue
            if _age_seconds(created) < grace:
                continue
            self.log.warning("reaper: deleting volume %s (%s) of deleted user %s", name, vid, user)
            await lc.delete_volume(vid)
            removed["volumes"].append(vid)
        from .pool.placement import managers  # pool imports this module
        for mgr in managers(self.spawner):
            for key, ids in (await mgr.reap(self.containers, grace, _age_seconds)).items():
                if ids:
                    removed.setdefault("pool_" + key, []).extend(ids)
        if any(removed.values()):
            self.log.info("reaper removed %s", {k: len(v) for k, v in removed.items()})
        return removed
