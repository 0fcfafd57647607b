"""Authentication admin in the broker service, behind real hubs.

Part 1: a MockHub loaded from a jupyterhub_config.py that calls ``jhub_broker.configure`` (DummyAuthenticator with
live settings, ``allow_existing_users`` off so only the live store lets new users in), the broker as a managed
service behind a real configurable-http-proxy.
Part 2: a real ``python -m jupyterhub`` subprocess restarted by the service through its restart command.
"""
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import requests
from cryptography.fernet import Fernet
from tornado.web import RequestHandler

from tests.services.conftest import Client, world_readable_tmpdir

from tests.fixtures.hub import stop_mockhub

os.environ.setdefault("JUPYTERHUB_CRYPT_KEY", Fernet.generate_key().decode())
CHP_BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "share", "node", "node_modules", ".bin")
if os.path.isdir(CHP_BIN) and CHP_BIN not in os.environ["PATH"]:
    os.environ["PATH"] = CHP_BIN + os.pathsep + os.environ["PATH"]

SECRET = "hunter2-Very-Secret-Password-0451"
HUBCTL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hubctl.py")


def write_config(path, body):
    with open(path, "w") as f:
        f.write("import os, sys\nimport jhub_broker\n" + body)


@pytest.fixture(scope="module")
async def auth_hub():
    from jupyterhub.tests.mocking import MockHub
    from jupyterhub.tests.utils import public_host
    from traitlets.config import PyFileConfigLoader

    d = world_readable_tmpdir("jb-auth-")
    cfg_path = os.path.join(d, "jupyterhub_config.py")
    write_config(cfg_path, f"""
jhub_broker.configure(c, spawner="jupyterhub.spawner.SimpleLocalProcessSpawner", authenticator="dummy",
                      admin_users=["admin"], allowed_users=["alice"], allow_existing_users=False,
                      environments_root={os.path.join(d, 'envs')!r}, auth_config_dir={os.path.join(d, 'conf.d')!r})
c.JupyterHub.cookie_secret = os.urandom(32)
""")
    c = PyFileConfigLoader("jupyterhub_config.py", path=d).load_config()
    MockHub.clear_instance()
    app = MockHub.instance(config=c)
    await app.initialize()
    await app.start()
    client = Client(public_host(app))
    service = app.base_url.rstrip("/") + "/services/broker/"
    await client.wait_for(service + "api/health", timeout=60)
    tokens = {}

    def token(name):
        from jupyterhub import orm
        if name not in tokens:
            tokens[name] = app.users[app.db.query(orm.User).filter_by(name=name).one()].new_api_token(note="t")
        return tokens[name]

    async def api(method, path, user="admin", **kw):
        return await client.request(method, service + "api/" + path, token=token(user), **kw)

    ns = type("AuthHub", (), {})()
    ns.app, ns.client, ns.service, ns.api, ns.token, ns.dir = app, client, service, api, token, d
    ns.hub = client.base + app.base_url.rstrip("/")
    try:
        yield ns
    finally:
        try:
            await stop_mockhub(app)
        finally:
            MockHub.clear_instance()
            shutil.rmtree(d, ignore_errors=True)


def login(hub_url, username, password=""):
    """A browser's hub login; returns (session, logged in?)."""
    s = requests.Session()
    s.get(hub_url + "/hub/login", timeout=30)
    r = s.post(hub_url + "/hub/login", params={"_xsrf": s.cookies.get("_xsrf")},
               data={"username": username, "password": password}, allow_redirects=False, timeout=30)
    return s, r.status_code == 302


async def alogin(hub_url, username, password=""):
    return await asyncio.to_thread(login, hub_url, username, password)


def app_routes():
    """The service's real route table (BrokerService.make_app), as (pattern, handler)."""
    from jhub_broker.services.app import BrokerService
    d = world_readable_tmpdir("jb-routes-")
    try:
        svc = BrokerService()
        svc.initialize([f"--BrokerService.environments_root={d}"])
        app = svc.make_app()
        return [(rule.matcher.regex.pattern, rule.target) for rule in app.wildcard_router.rules]
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- part 1
async def test_configure_wires_hub_and_bootstrap_admin_logs_in(auth_hub):
    from jhub_broker.authenticator.live import LiveSettingsMixin
    app = auth_hub.app
    assert isinstance(app.authenticator, LiveSettingsMixin)
    assert app.authenticator.allow_existing_users is False
    assert "broker" in app._service_map
    assert app._service_map["broker"].orm.admin, "the service must be able to grant the admin flag"
    # the bootstrap admin's first ever login works and they reach the admin pages through the hub's OAuth
    s, ok = await alogin(auth_hub.hub, "admin")
    assert ok
    r = await asyncio.to_thread(s.get, auth_hub.client.base + auth_hub.service + "auth", timeout=30)
    assert r.status_code == 200, r.text[:300]
    assert "Allowed users" in r.text


async def test_every_admin_route_refuses_non_admins(auth_hub):
    from jhub_broker.services.authadmin.handlers import AdminHandler
    routes = app_routes()
    admin_routes = [(p, h) for p, h in routes if isinstance(h, type) and issubclass(h, AdminHandler)]
    # every route under auth/ is an admin route
    for pattern, handler in routes:
        if re.search(r"/(api/)?auth(/|\$|$)", pattern):
            assert (pattern, handler) in admin_routes, pattern
    assert len(admin_routes) >= 15
    calls = 0
    for pattern, handler in admin_routes:
        path = pattern.rstrip("$").replace("([^/]+)", "carol")
        path = path[path.index("/services/broker/") + len("/services/broker/"):] if "/services/broker/" in path \
            else re.sub(r"^.*?/services/broker/", "", path)
        for method in ("get", "post", "put", "patch", "delete"):
            if getattr(handler, method) is getattr(RequestHandler, method):
                continue
            url = auth_hub.service + path
            kw = {"json": {"name": "alice", "kind": "dummy", "enabled": True}} if method != "get" else {}
            r = await auth_hub.client.request(method.upper(), url, token=auth_hub.token("alice"), **kw)
            assert r.status_code == 403, (method, path, r.status_code, r.text[:200])
            assert "hub admin" in r.text
            anon = await auth_hub.client.request(method.upper(), url, **kw)
            assert anon.status_code in (302, 403), (method, path, anon.status_code)
            calls += 1
    assert calls >= 20
    # nothing changed
    st = (await auth_hub.api("GET", "auth")).json()
    assert st["live"]["allowed_users"] == [] and st["live"]["admins_only"] is False
    assert st["method"] is None


async def test_admin_adds_allowed_user_who_logs_in_at_once(auth_hub):
    hub = auth_hub
    _, ok = await alogin(hub.hub, "bob")
    assert not ok, "bob is not allowed yet"
    r = await hub.api("POST", "auth/allowed-users", json={"name": "bob"})
    assert r.status_code == 201, r.text
    _, ok = await alogin(hub.hub, "bob")
    assert ok, "bob is allowed at once, without a restart"
    st = (await hub.api("GET", "auth")).json()
    assert "bob" in st["live"]["allowed_users"]
    assert "bob" in [u["name"] for u in st["hub_users"]]
    # removing him takes effect at once too
    r = await hub.api("DELETE", "auth/allowed-users/bob")
    assert r.status_code == 200, r.text
    _, ok = await alogin(hub.hub, "bob")
    assert not ok
    # only admins may log in: alice (allowed in the config) is refused, the admin is not
    assert (await hub.api("PUT", "auth/admins-only", json={"enabled": True})).status_code == 200
    assert not (await alogin(hub.hub, "alice"))[1]
    assert (await alogin(hub.hub, "admin"))[1]
    assert (await hub.api("PUT", "auth/admins-only", json={"enabled": False})).status_code == 200
    assert (await alogin(hub.hub, "alice"))[1]
    audit = [(a["user"], a["action"], a["detail"]) for a in (await hub.api("GET", "auth/audit")).json()["actions"]]
    assert ("admin", "auth:allow", "bob") in audit and ("admin", "auth:disallow", "bob") in audit
    # the environments history (viewable by users) does not show the audit log
    hist = (await hub.api("GET", "history", user="alice")).json()["actions"]
    assert not [a for a in hist if a["action"].startswith("auth:")]
    hist = (await hub.api("GET", "history?environment=%40auth", user="alice")).json()["actions"]
    assert hist == []


async def test_last_admin_is_never_removed(auth_hub):
    hub = auth_hub
    r = await hub.api("DELETE", "auth/admins/admin")
    assert r.status_code == 409 and "last admin" in r.json()["message"], r.text
    r = await hub.api("POST", "auth/admins", json={"name": "carol"})
    assert r.status_code == 201, r.text
    _, ok = await alogin(hub.hub, "carol")
    assert ok, "a new admin may log in at once"
    assert hub.app.users["carol"].admin
    r = await hub.api("GET", "auth", user="carol")
    assert r.status_code == 200, "carol reaches the admin routes now"
    r = await hub.api("DELETE", "auth/admins/admin", user="carol")
    assert r.status_code == 409 and "jupyterhub_config.py" in r.json()["message"]
    r = await hub.api("DELETE", "auth/admins/carol")
    assert r.status_code == 200, r.text
    assert not hub.app.users["carol"].admin
    r = await hub.api("GET", "auth", user="carol")
    assert r.status_code == 403


def _browser(hub, user):
    s, ok = login(hub.hub, user)
    assert ok
    r = s.get(hub.client.base + hub.service + "auth", timeout=30)
    assert r.status_code == 200, r.text[:300]
    return s, re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)


async def test_forms_need_xsrf_pages_escape_and_secrets_stay_hidden(auth_hub):
    hub = auth_hub
    base = hub.client.base + hub.service

    def flow():
        s, xsrf = _browser(hub, "admin")
        no_xsrf = s.post(base + "api/auth/allowed-users", data={"name": "mallory"}, allow_redirects=False)
        evil = s.post(base + "api/auth/allowed-users", data={"name": "<script>x", "_xsrf": xsrf},
                      allow_redirects=False)
        good = s.post(base + "api/auth/allowed-users", data={"name": "dave", "_xsrf": xsrf}, allow_redirects=False)
        # a method change without a restart command: written, validated, "restart the hub yourself"
        method = s.post(base + "api/auth/method", allow_redirects=False, data={
            "_xsrf": xsrf, "kind": "dummy", "password": SECRET, "login_service": "<b>Our</b> hub"})
        pages = {p: s.get(base + p, timeout=30) for p in ("auth", "auth/method", "auth/audit")}
        return no_xsrf, evil, good, method, pages

    no_xsrf, evil, good, method, pages = await asyncio.to_thread(flow)
    assert no_xsrf.status_code == 403
    assert evil.status_code == 400 and "&lt;script&gt;x" in evil.text and "<script>x" not in evil.text
    assert good.status_code == 302
    assert method.status_code == 302, method.text[:500]
    for name, page in pages.items():
        assert page.status_code == 200, name
        assert page.text.count("<form") == page.text.count('name="_xsrf"'), name
        assert SECRET not in page.text and SECRET[:12] not in page.text, name
    m = pages["auth/method"].text
    assert "&lt;b&gt;Our&lt;/b&gt; hub" in m and "<b>Our</b>" not in m
    assert "pending-restart" in m and "Needs a hub restart" in m
    assert "dave" in pages["auth"].text
    st = (await hub.api("GET", "auth/method")).json()
    assert st["method"]["secrets"]["password"].startswith("••••") and SECRET not in str(st)
    fragment = open(os.path.join(hub.dir, "conf.d", "50-jhub-broker-auth.py")).read()
    assert "LiveDummyAuthenticator" in fragment and SECRET not in fragment
    # the encrypted secret is what the hub loads
    from traitlets.config import PyFileConfigLoader
    cfg = PyFileConfigLoader("50-jhub-broker-auth.py", path=os.path.join(hub.dir, "conf.d")).load_config()
    assert cfg.LiveDummyAuthenticator.password == SECRET


# ---------------------------------------------------------------- part 2: a real hub, restarted
def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def real_hub():
    d = world_readable_tmpdir("jb-realhub-")
    port, hub_port, api_port = free_port(), free_port(), free_port()
    token = Fernet.generate_key().decode()[:32]
    write_config(os.path.join(d, "jupyterhub_config.py"), f"""
jhub_broker.configure(c, spawner="jupyterhub.spawner.SimpleLocalProcessSpawner", authenticator="dummy",
                      admin_users=["admin"], environments_root={os.path.join(d, 'envs')!r},
                      auth_config_dir={os.path.join(d, 'conf.d')!r}, restart_timeout=25,
                      restart_command=[sys.executable, {HUBCTL!r}, "restart", {d!r}])
c.JupyterHub.bind_url = "http://127.0.0.1:{port}/"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.JupyterHub.db_url = "sqlite:///{d}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{d}/cookie_secret"
c.ConfigurableHTTPProxy.pid_file = "{d}/proxy.pid"
c.JupyterHub.api_tokens = {{{token!r}: "admin"}}
""")
    subprocess.run([sys.executable, HUBCTL, "start", d], check=True)
    url = f"http://127.0.0.1:{port}"
    ns = type("RealHub", (), {"dir": d, "url": url, "token": token, "client": Client(url)})()
    try:
        yield ns
    finally:
        subprocess.run([sys.executable, HUBCTL, "stop", d])
        log = open(os.path.join(d, "hub.log")).read() if os.path.exists(os.path.join(d, "hub.log")) else ""
        shutil.rmtree(d, ignore_errors=True)
        assert SECRET not in log


async def wait_restart(hub, timeout=150):
    """Poll the (restarted) service until the restart helper reports an outcome."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            r = await hub.client.request("GET", "/services/broker/api/auth/restart", token=hub.token, timeout=5)
            if r.status_code == 200:
                last = r.json()["restart"]
                if last and last["state"] not in ("restarting", "rolling-back"):
                    return last
        except requests.RequestException:
            pass
        await asyncio.sleep(1)
    raise AssertionError(f"no restart outcome: {last}")


async def test_method_change_restarts_the_hub_and_a_broken_one_is_rolled_back(real_hub):
    hub = real_hub
    await hub.client.wait_for("/services/broker/api/health", timeout=90)
    assert (await alogin(hub.url, "anyone", "whatever"))[1] is False  # no allowed users: nobody but admin
    # 1. switch to a shared password: validated, written, hub restarted, back
    r = await hub.client.request("POST", "/services/broker/api/auth/method", token=hub.token,
                                 json={"kind": "dummy", "password": SECRET})
    assert r.status_code == 202, r.text
    assert r.json()["restart"]["state"] == "restarting"
    status = await wait_restart(hub)
    assert status["state"] == "ok", status
    assert not (await alogin(hub.url, "admin", "wrong"))[1]
    assert (await alogin(hub.url, "admin", SECRET))[1], "the new method is in force after the restart"
    fragment = os.path.join(hub.dir, "conf.d", "50-jhub-broker-auth.py")
    good = open(fragment).read()

    # 2. a config that validates on its own but stops the hub from starting (the configured admin does not
    #    match the new username pattern): the hub does not come back, the previous config is restored
    r = await hub.client.request("POST", "/services/broker/api/auth/method", token=hub.token,
                                 json={"kind": "dummy", "username_pattern": "^zz-[a-z]+$"})
    assert r.status_code == 202, r.text
    status = await wait_restart(hub)
    assert status["state"] == "rolled-back", status
    assert open(fragment).read() == good
    assert [f for f in os.listdir(os.path.dirname(fragment)) if ".bak-" in f]
    assert (await alogin(hub.url, "admin", SECRET))[1], "the hub is back with the previous method"
    log = open(os.path.join(hub.dir, "hub.log")).read()
    assert "is not valid" in log  # the real reason the broken hub did not start
    # 3. a config that does not validate is refused before anything changes
    r = await hub.client.request("POST", "/services/broker/api/auth/method", token=hub.token,
                                 json={"kind": "generic-oidc", "issuer": "https://id.example.org",
                                       "client_id": "x", "client_secret": SECRET, "oauth_callback_url": "not a url"})
    assert r.status_code == 400 and SECRET not in r.text
    assert open(fragment).read() == good
    audit = (await hub.client.request("GET", "/services/broker/api/auth/audit", token=hub.token)).json()["actions"]
    whats = [(a["action"], a["result"]) for a in audit]
    assert ("auth:restart", "failed") in whats and ("auth:restart", "ok") in whats
    assert SECRET not in str(audit)
    restart_log = open(fragment + ".restart.log").read()
    assert "rolling-back" in restart_log and SECRET not in restart_log
