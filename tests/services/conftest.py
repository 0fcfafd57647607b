"""A real JupyterHub (MockHub, as pytest-jupyterhub's hub_app starts it) with the broker as a managed service,
a real configurable-http-proxy, and single-user servers running as ``nobody``."""
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import requests

from tests.fixtures.hub import stop_mockhub

CHP_DIR = "/tmp/npmchp/node_modules/.bin"
if os.path.isdir(CHP_DIR) and CHP_DIR not in os.environ.get("PATH", ""):
    os.environ["PATH"] = CHP_DIR + os.pathsep + os.environ["PATH"]

SHARED_SINGLEUSER = "/opt/jhub-broker/singleuser"


def world_readable_tmpdir(prefix):
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="session")
def singleuser_python():
    """Python of a venv (from Debian's /usr/bin/python3, readable by nobody) with jupyterhub-singleuser."""
    shared = os.path.join(SHARED_SINGLEUSER, "bin", "python")
    if os.path.exists(os.path.join(SHARED_SINGLEUSER, "bin", "jupyterhub-singleuser")):
        yield shared
        return
    import jupyterhub
    d = world_readable_tmpdir("jb-singleuser-")
    venv = os.path.join(d, "venv")
    subprocess.run([sys.executable, "-m", "virtualenv", "--no-seed", "--python", "/usr/bin/python3", venv],
                   check=True, capture_output=True)
    from jhub_broker.services.environments.builder import find_uv
    subprocess.run([find_uv(), "pip", "install", "-q", "--python", os.path.join(venv, "bin", "python"),
                    f"jupyterhub=={jupyterhub.__version__}", "jupyter_server"], check=True)
    subprocess.run(["chmod", "-R", "a+rX", d], check=True)
    yield os.path.join(venv, "bin", "python")
    shutil.rmtree(d, ignore_errors=True)


class Client:
    """requests, run in a thread so the in-process hub keeps serving."""

    def __init__(self, base):
        self.base = base

    async def request(self, method, path, token=None, **kw):
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"token {token}"
        kw.setdefault("allow_redirects", False)
        kw.setdefault("timeout", 60)
        return await asyncio.to_thread(requests.request, method, self.base + path, headers=headers, **kw)

    async def wait_for(self, path, token=None, timeout=60, ok=(200,)):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = await self.request("GET", path, token=token, timeout=5)
                if last.status_code in ok:
                    return last
            except requests.ConnectionError:
                pass
            await asyncio.sleep(0.3)
        raise AssertionError(f"{path} not ready: {last.status_code if last is not None else 'no answer'}")


class Hub:
    def __init__(self, app, root):
        self.app = app
        self.root = root
        from jupyterhub.tests.utils import public_host
        self.client = Client(public_host(app))
        self.base_url = app.base_url  # e.g. /@/space%20word/
        self.service = self.base_url.rstrip("/") + "/services/broker/"
        self.tokens = {}

    def token(self, name):
        if name not in self.tokens:
            user = self.app.users[self.app.db.query(__import__("jupyterhub.orm").orm.User).filter_by(name=name).one()]
            self.tokens[name] = user.new_api_token(note="broker test")
        return self.tokens[name]

    async def api(self, method, path, user="admin", **kw):
        """Call the broker's REST API through the hub's proxy with ``user``'s hub token."""
        return await self.client.request(method, self.service + "api/" + path, token=self.token(user), **kw)

    async def wait_build(self, env, number, user="admin", timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = await self.api("GET", f"environments/{env}", user=user)
            b = next(b for b in r.json()["builds"] if b["number"] == number)
            if b["status"] not in ("queued", "building", "testing"):
                return b
            await asyncio.sleep(0.5)
        raise AssertionError(f"build {env}/{number} did not finish")


@pytest.fixture(scope="module")
async def broker_hub(singleuser_python):
    """A started MockHub with the broker service (real subprocess behind real CHP) and NobodySpawner."""
    from jupyterhub.tests.mocking import MockHub
    from traitlets.config import Config

    from jhub_broker.services.config import service_config
    from tests.services.spawners import NobodySpawner

    from tests.services.probe import make_probe_index

    root = world_readable_tmpdir("jb-envs-")
    homes = world_readable_tmpdir("jb-homes-")
    index = world_readable_tmpdir("jb-index-")
    probe = make_probe_index(index)  # a local package whose build records what builds can see
    c = Config()
    service_config(c, environments_root=os.path.join(root, "environments"),
                   extra_args=["--BrokerService.keep_builds=1"], environment={"UV_FIND_LINKS": index})
    c.JupyterHub.spawner_class = NobodySpawner
    c.NobodySpawner.homes = homes
    c.Spawner.cmd = [os.path.join(os.path.dirname(singleuser_python), "jupyterhub-singleuser")]
    c.Spawner.start_timeout = 60
    c.Spawner.http_timeout = 60
    c.Authenticator.admin_users = {"admin"}
    c.Authenticator.allowed_users = {"alice"}
    c.JupyterHub.cleanup_servers = True
    c.JupyterHub.cookie_secret = os.urandom(32)  # no jupyterhub_cookie_secret file in the cwd
    MockHub.clear_instance()
    app = MockHub.instance(config=c)
    await app.initialize()
    await app.start()
    hub = Hub(app, os.path.join(root, "environments"))
    hub.probe = probe
    await hub.client.wait_for(hub.service + "api/health", timeout=60)
    try:
        yield hub
    finally:
        try:
            await stop_mockhub(app)
        finally:
            MockHub.clear_instance()
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(homes, ignore_errors=True)
            shutil.rmtree(index, ignore_errors=True)
