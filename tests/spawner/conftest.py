"""A real JupyterHub (MockHub + real configurable-http-proxy) using OpenStackSpawner
against the local cloud, whose VMs really run the notebook server."""
import asyncio
import time

import pytest
import requests

from jhub_broker.emulators import mockhub
from jhub_broker.emulators.mockhub import start_hub, stop_hub


class HubClient:
    """requests in a thread, so the in-process hub keeps serving."""

    def __init__(self, app):
        from jupyterhub.tests.utils import public_host
        self.app = app
        self.base = public_host(app)
        self.prefix = app.base_url
        self.tokens = {}

    def token(self, name):
        from jupyterhub import orm
        if name not in self.tokens:
            orm_user = self.app.db.query(orm.User).filter_by(name=name).one_or_none()
            if orm_user is None:
                orm_user = orm.User(name=name)
                self.app.db.add(orm_user)
                self.app.db.commit()
                from jupyterhub.roles import assign_default_roles
                assign_default_roles(self.app.db, entity=orm_user)
            self.tokens[name] = self.app.users[orm_user].new_api_token(note="spawner test")
        return self.tokens[name]

    async def request(self, method, path, user="admin", **kw):
        headers = kw.pop("headers", {})
        if user:
            headers["Authorization"] = f"token {self.token(user)}"
        kw.setdefault("allow_redirects", False)
        kw.setdefault("timeout", 60)
        url = self.base + self.prefix.rstrip("/") + "/" + path.lstrip("/")
        return await asyncio.to_thread(requests.request, method, url, headers=headers, **kw)

    async def progress_events(self, name, server="", timeout=60):
        """The spawn progress stream the hub's spawn page shows, as a list of events."""
        import json
        path = f"users/{name}/servers/{server}/progress" if server else f"users/{name}/server/progress"

        def read():
            url = self.base + self.prefix.rstrip("/") + "/hub/api/" + path
            events = []
            with requests.get(url, headers={"Authorization": f"token {self.token(name)}"}, stream=True,
                              timeout=timeout) as r:
                for line in r.iter_lines(decode_unicode=True):
                    if line and line.startswith("data:"):
                        events.append(json.loads(line[5:]))
                        if events[-1].get("failed") or events[-1].get("ready"):
                            break
            return events
        return await asyncio.to_thread(read)

    async def api(self, method, path, user="admin", **kw):
        return await self.request(method, "hub/api/" + path.lstrip("/"), user=user, **kw)

    async def wait_ready(self, name, server="", timeout=240):
        """Wait until the user's server is ready or failed; returns the server model (or None)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = await self.api("GET", f"users/{name}")
            model = r.json()["servers"].get(server)
            if model is None:
                return None
            if model["ready"]:
                return model
            if not model["pending"]:
                return model
            await asyncio.sleep(0.3)
        raise AssertionError(f"server of {name} not ready after {timeout}s")

    async def start_and_wait(self, name, server="", options=None, timeout=240):
        self.token(name)  # makes the user
        path = f"users/{name}/servers/{server}" if server else f"users/{name}/server"
        r = await self.api("POST", path, json=options or {})
        assert r.status_code in (201, 202), r.text
        return await self.wait_ready(name, server, timeout)

    async def stop_and_wait(self, name, server="", timeout=120):
        path = f"users/{name}/servers/{server}" if server else f"users/{name}/server"
        r = await self.api("DELETE", path)
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = (await self.api("GET", f"users/{name}")).json()["servers"].get(server)
            if model is None:
                return
            await asyncio.sleep(0.3)
        raise AssertionError("server did not stop")


def spawner_config(cloud, **overrides):
    """The test hub's config (hub_id "test"): short timeouts, a 1 GB volume; ``overrides`` are spawner traits."""
    options = dict(volume_size=1, cache_interval=2, boot_timeout=60, notebook_timeout=90)
    return mockhub.hub_config(cloud, hub_id="test", **{**options, **overrides})


@pytest.fixture
async def os_hub(local_cloud):
    """Factory: a hub configured for the local cloud; stopped (servers left to the test) at the end."""
    apps = []

    async def make(cloud=None, hub_config=None, **overrides):
        config = spawner_config(cloud or local_cloud, **overrides)
        for section, values in (hub_config or {}).items():
            for key, value in values.items():
                setattr(config[section], key, value)
        app = await start_hub(config)
        apps.append(app)
        return app, HubClient(app)

    yield make
    for app in apps:
        await stop_hub(app)
    # each test starts from an empty hub footprint in the shared cloud
    await asyncio.to_thread(wipe_hub_resources, local_cloud)


def wipe_hub_resources(cloud, tag="jhub-broker-hub-test"):
    conn = cloud.connect()
    servers, fips, vols = tagged(cloud, tag)
    for fip in fips:
        conn.network.delete_ip(fip, ignore_missing=True)
    for s in servers:
        conn.compute.delete_server(s, ignore_missing=True)
    for s in servers:
        conn.compute.wait_for_delete(s, interval=0.2, wait=60)
    for v in vols:
        conn.block_storage.wait_for_status(v, "available", failures=["error"], interval=0.2, wait=60)
        conn.block_storage.delete_volume(v, ignore_missing=True)


def tagged(cloud, tag="jhub-broker-hub-test"):
    """What the cloud holds for the test hub: servers, floating IPs, volumes."""
    conn = cloud.connect()
    servers = [s for s in conn.compute.servers(details=True, tags=tag)]
    fips = list(conn.network.ips(tags=tag))
    vols = [v for v in conn.block_storage.volumes(details=True) if (v.metadata or {}).get("jhub_broker_hub") == "test"]
    return servers, fips, vols


def footprint(cloud):
    """Ids of what the project holds that a spawn makes and a stop must remove: servers, floating IPs,
    the servers' ports, and volumes other than the users' data volumes (which outlive servers)."""
    conn = cloud.connect()
    return {"servers": {s.id for s in conn.compute.servers()},
            "floating_ips": {f.id for f in conn.network.ips()},
            "ports": {p.id for p in conn.network.ports() if (p.device_owner or "").startswith("compute:")},
            "volumes": {v.id for v in conn.block_storage.volumes() if not (v.name or "").startswith("jupyter-data-")}}


class injected_faults:
    """``async with injected_faults(cloud, rules):`` the cloud applies ``rules`` inside the block only."""

    def __init__(self, cloud, rules):
        self.cloud, self.rules = cloud, rules

    async def __aenter__(self):
        await asyncio.to_thread(self.cloud.admin, "POST", "/_emulator/faults", {"faults": self.rules})
        return self

    async def fired(self):
        return (await asyncio.to_thread(self.cloud.admin, "GET", "/_emulator/faults"))["faults"]

    async def __aexit__(self, *exc):
        await asyncio.to_thread(self.cloud.admin, "DELETE", "/_emulator/faults")


async def failed_spawn(hub, name, options=None):
    """Start a server that must fail; the message the user is shown.

    A spawn failing within the hub's slow_spawn_timeout answers the start request
    itself; a slower one reports through the progress stream of the spawn page.
    """
    hub.token(name)
    r = await hub.api("POST", f"users/{name}/server", json=options or {})
    if r.status_code >= 400:
        return r.json()["message"]
    assert r.status_code == 202, r.text
    model = await hub.wait_ready(name, timeout=180)
    assert model is None or not model.get("ready"), "the spawn should have failed"
    events = await hub.progress_events(name)
    assert events and events[-1].get("failed"), events
    return events[-1]["message"]
