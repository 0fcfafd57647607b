"""One shared view of the hub's servers, refreshed by one list call per interval.

Every spawner's ``poll()`` reads this cache instead of asking the cloud about
its own server, the way kubespawner's reflector serves pods: with N running
servers the hub makes one ``GET /servers/detail?tags=<hub tag>`` per interval,
not N.  Spawns in progress ask for a faster rhythm while they wait.
"""
import asyncio
import logging
import time

log = logging.getLogger("jhub_broker.spawner.servercache")


def _summary(server):
    fault = server.fault or {}
    return {
        "id": server.id,
        "name": server.name,
        "status": server.status,
        "fault": fault.get("message") if isinstance(fault, dict) else str(fault),
        "addresses": server.addresses or {},
        "metadata": dict(server.metadata or {}),
        "created": server.created_at,
    }


def _list_tagged(conn, tag):
    return [_summary(s) for s in conn.compute.servers(details=True, tags=tag)]


class ServerCache:
    _instances = {}

    def __init__(self, adapter, tag, interval=10.0, fast_interval=0.1):
        self.adapter = adapter
        self.tag = tag
        self.interval = interval
        self.fast_interval = fast_interval
        self.servers = {}
        self.last_ok_started = 0.0  # monotonic start of the last successful list
        self.last_error = None
        self.rounds = 0
        self._waiters = 0
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task = None

    @classmethod
    def shared(cls, adapter, tag, interval=10.0):
        key = (id(adapter), tag)
        cache = cls._instances.get(key)
        if cache is None or cache._loop_closed():
            cache = cls._instances[key] = cls(adapter, tag, interval)
        cache.interval = interval
        cache.ensure_running()
        return cache

    @classmethod
    def stop_all(cls):
        for cache in cls._instances.values():
            if cache._task is not None:
                cache._task.cancel()
        cls._instances.clear()

    def _loop_closed(self):
        return self._task is not None and (self._task.get_loop().is_closed() or self._task.done())

    def ensure_running(self):
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        while True:
            await self.refresh()
            delay = self.fast_interval if self._waiters else self.interval
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def refresh(self):
        started = time.monotonic()
        try:
            listed = await self.adapter.run(_list_tagged, self.tag)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed round keeps the old view
            self.last_error = exc
            log.warning("listing servers tagged %s failed, keeping the last view: %s", self.tag, exc)
            return False
        self.servers = {s["id"]: s for s in listed}
        self.last_ok_started = started
        self.last_error = None
        self.rounds += 1
        async with self._changed:
            self._changed.notify_all()
        return True

    def lookup(self, server_id, valid_after):
        """``(entry, certain)``: entry is None when the server is not listed; certain says
        whether a successful list that started after ``valid_after`` backs the answer."""
        return self.servers.get(server_id), self.last_ok_started > valid_after

    async def wait_for(self, server_id, predicate, timeout):
        """Wait until ``predicate(entry_or_None)`` is true for a list newer than now."""
        asked = time.monotonic()
        deadline = asked + timeout
        self._waiters += 1
        self._wake.set()
        try:
            while True:
                if self.last_ok_started > asked:
                    entry = self.servers.get(server_id)
                    if predicate(entry):
                        return entry
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise asyncio.TimeoutError()
                async with self._changed:
                    try:
                        await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
                    except asyncio.TimeoutError:
                        pass
        finally:
            self._waiters -= 1
