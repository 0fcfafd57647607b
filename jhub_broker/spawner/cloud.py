"""An async adapter over the blocking openstacksdk.

One :class:`CloudAdapter` per cloud, shared by every spawner of the hub: one
authenticated connection (keystone token reused), a bounded thread pool so a
burst of spawns cannot open hundreds of sockets, and retries for the errors a
busy cloud gives (429 with Retry-After, 502/503/504, dropped connections).
"""
import asyncio
import functools
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import openstack
import openstack.connection
from openstack import exceptions as os_exc

log = logging.getLogger("jhub_broker.spawner.cloud")

# Status codes where the request certainly was not carried out, so even a
# create may be sent again.
_RETRY_ALWAYS = {429, 503}
# Status codes worth retrying for reads and deletes only.
_RETRY_IDEMPOTENT = {500, 502, 504}


class CloudError(Exception):
    """A cloud call that failed for good; ``message`` is fit to show a user."""

    def __init__(self, message, status_code=None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code


def error_text(exc):
    """The cloud's own explanation of an openstacksdk error, without the request noise."""
    if isinstance(exc, os_exc.HttpException):
        details = getattr(exc, "details", None) or ""
        if details:
            return str(details)
        return str(getattr(exc, "message", "") or exc)
    return str(exc)


def is_transient(exc):
    if isinstance(exc, os_exc.HttpException):
        return exc.status_code in _RETRY_ALWAYS or exc.status_code in _RETRY_IDEMPOTENT
    return isinstance(exc, (os_exc.SDKException, ConnectionError, TimeoutError)) and not isinstance(
        exc, os_exc.ResourceNotFound)


def _retry_after(exc):
    resp = getattr(exc, "response", None)
    value = resp.headers.get("Retry-After") if resp is not None else None
    try:
        return min(float(value), 30.0) if value is not None else None
    except ValueError:
        return None


class CloudAdapter:
    """Runs openstacksdk calls off the event loop, bounded, with retries."""

    _instances = {}
    _instances_lock = threading.Lock()

    def __init__(self, connect_kwargs, max_workers=8, retries=4, backoff=0.5):
        self.connect_kwargs = connect_kwargs
        self.retries = retries
        self.backoff = backoff
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="openstack")
        self._conn = None
        self._conn_lock = threading.Lock()
        self.calls = 0  # every call made, for tests and benchmarks

    @classmethod
    def shared(cls, key, connect_kwargs, max_workers=8):
        """The one adapter for this cloud configuration in this process."""
        with cls._instances_lock:
            adapter = cls._instances.get(key)
            if adapter is None:
                adapter = cls._instances[key] = cls(connect_kwargs, max_workers=max_workers)
            return adapter

    @classmethod
    def forget_all(cls):
        """Drop every shared adapter (tests start new clouds)."""
        with cls._instances_lock:
            for adapter in cls._instances.values():
                adapter.executor.shutdown(wait=False, cancel_futures=True)
            cls._instances.clear()

    @property
    def conn(self):
        with self._conn_lock:
            if self._conn is None:
                if "config" in self.connect_kwargs:
                    # a cloud region already read from clouds.yaml
                    self._conn = openstack.connection.Connection(config=self.connect_kwargs["config"])
                else:
                    self._conn = openstack.connect(**self.connect_kwargs)
            return self._conn

    async def run(self, fn, *args, idempotent=True, **kwargs):
        """Call ``fn(conn, *args, **kwargs)`` in the pool; retry transient failures."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            attempt += 1
            self.calls += 1
            try:
                return await loop.run_in_executor(
                    self.executor, functools.partial(fn, self.conn, *args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - classified below
                status = getattr(exc, "status_code", None)
                retryable = (status in _RETRY_ALWAYS) or (
                    idempotent and (status in _RETRY_IDEMPOTENT or (status is None and is_transient(exc))))
                if not retryable or attempt > self.retries:
                    raise
                delay = _retry_after(exc)
                if delay is None:
                    delay = self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
                log.warning("cloud call %s failed (%s), retry %d/%d in %.1fs",
                            getattr(fn, "__name__", fn), status or type(exc).__name__,
                            attempt, self.retries, delay)
                await asyncio.sleep(delay)
