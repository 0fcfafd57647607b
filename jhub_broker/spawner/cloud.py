"""An async adapter over the blocking openstacksdk.

One :class:`CloudAdapter` per cloud, shared by every spawner of the hub: one
authenticated connection (keystone token reused), a bounded thread pool so a
burst of spawns cannot open hundreds of sockets, and retries for the errors a
busy cloud gives (429 with Retry-After, 5xx, dropped connections, timeouts).

Reads and deletes go through :meth:`CloudAdapter.run` and are retried on any
transient failure.  Creates go through :meth:`CloudAdapter.create`: a create
whose answer was lost (500/502/504, a timeout, a dropped connection) may have
been carried out, so before sending it again the adapter looks for what it may
have made; each multi-step operation is therefore split into single calls.
"""
import asyncio
import functools
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import openstack
import openstack.connection
from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as os_exc

log = logging.getLogger("jhub_broker.spawner.cloud")

# The request certainly was not carried out: even a create may be sent again.
_NOT_DONE = {429, 503}
# The request may or may not have been carried out (the answer was lost or replaced).
_AMBIGUOUS = {500, 502, 504}

# seconds: the longest pause between two attempts of a call (before jitter)
MAX_BACKOFF = 8.0

# outcome classes of a failed call
FINAL, NOT_DONE, AMBIGUOUS = "final", "not-done", "ambiguous"

_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
            413: "Request Entity Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class CloudError(Exception):
    """A cloud call that failed for good; ``message`` is fit to show a user."""

    def __init__(self, message, status_code=None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code


def status_of(exc):
    """The HTTP status of a failed call (openstacksdk or keystoneauth), or None when there was no answer."""
    for attr in ("status_code", "http_status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    return None


def status_text(status):
    return f"{status} {_REASONS.get(status, '')}".strip()


def error_text(exc):
    """The cloud's own explanation of an openstacksdk error, without the request noise."""
    if isinstance(exc, os_exc.HttpException):
        details = getattr(exc, "details", None) or ""
        if details:
            return str(details)
        return str(getattr(exc, "message", "") or exc)
    if isinstance(exc, ksa_exc.ConnectTimeout):
        return "the cloud did not answer in time"
    if isinstance(exc, ksa_exc.ConnectionError) and not isinstance(exc, ksa_exc.SSLError):
        return "the connection to the cloud was lost"
    return str(exc)


def classify(exc):
    """FINAL, NOT_DONE (safe to send again) or AMBIGUOUS (may have been carried out)."""
    status = status_of(exc)
    if status is not None:
        if status in _NOT_DONE:
            return NOT_DONE
        return AMBIGUOUS if status in _AMBIGUOUS else FINAL
    if isinstance(exc, ksa_exc.SSLError):
        return FINAL  # a certificate problem does not heal by trying again
    if isinstance(exc, ksa_exc.DiscoveryFailure):
        return NOT_DONE  # the version document could not be read: the call itself was not sent
    # a timeout or a connection dropped before the answer: the request may have arrived
    if isinstance(exc, (ksa_exc.ConnectionError, ConnectionError, TimeoutError)):
        return AMBIGUOUS
    return FINAL


def is_transient(exc):
    return classify(exc) != FINAL


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

    async def _call(self, fn, *args, **kwargs):
        self.calls += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, self.conn, *args, **kwargs))

    def _delay(self, exc, attempt):
        delay = _retry_after(exc)
        if delay is None:
            delay = min(self.backoff * (2 ** (attempt - 1)), MAX_BACKOFF) * (0.5 + random.random())
        return delay

    async def run(self, fn, *args, idempotent=True, **kwargs):
        """Call ``fn(conn, *args, **kwargs)`` in the pool; retry transient failures.

        For reads and deletes (``idempotent``): sending them again is always safe.  A call
        that creates something belongs in :meth:`create`; ``idempotent=False`` retries only
        what certainly was not carried out (429, 503).
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._call(fn, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below
                kind = classify(exc)
                retryable = kind == NOT_DONE or (idempotent and kind == AMBIGUOUS)
                if not retryable or attempt > self.retries:
                    raise
                delay = self._delay(exc, attempt)
                log.warning("cloud call %s failed (%s), retry %d/%d in %.1fs",
                            getattr(fn, "__name__", fn), status_of(exc) or type(exc).__name__,
                            attempt, self.retries, delay)
                await asyncio.sleep(delay)

    async def create(self, make, find, what="resource"):
        """Create something with ``make(conn)``, safe to repeat.

        After an ambiguous failure ``find(conn)`` (a read, retried on its own) looks for
        what the lost create may have made and returns it, or None; only when nothing is
        found is the create sent again.  ``find`` must recognise only what this very
        request would have made (a name plus a marker unique to the request).
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._call(make)
            except Exception as exc:  # noqa: BLE001 - classified below
                kind = classify(exc)
                if kind == FINAL:
                    raise
                if kind == AMBIGUOUS:
                    found = await self.run(find)
                    if found is not None:
                        log.warning("creating a %s failed (%s), but the cloud had made it: using it",
                                    what, status_of(exc) or type(exc).__name__)
                        return found
                if attempt > self.retries:
                    raise
                delay = self._delay(exc, attempt)
                log.warning("creating a %s failed (%s), nothing was made; retry %d/%d in %.1fs",
                            what, status_of(exc) or type(exc).__name__, attempt, self.retries, delay)
                await asyncio.sleep(delay)
