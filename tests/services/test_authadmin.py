"""Authentication admin in the broker service, behind real hubs.

Part 1: a MockHub loaded from a jupyterhub_config.py that calls ``jhub_broker.configure`` (DummyAuthenticator with
live settings, ``allow_existing_users`` off so only the live store lets new users in), the broker as a managed
service behind a real configurable-http-proxy.
Part 2: a real ``python -m jupyterhub`` subprocess restarted by the service through its restart command.
"""
import asyncio
import contextlib
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
            "_xsrf": xsrf, "kind": "gitlab", "gitlab_url": "https://gitlab.example.org", "client_id": "hub",
            "client_secret": SECRET, "oauth_callback_url": "https://hub.example.org/hub/oauth_callback",
            "login_service": "<b>Our</b> hub"})
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
    assert st["method"]["secrets"]["client_secret"].startswith("••••") and SECRET not in str(st)
    fragment = open(os.path.join(hub.dir, "conf.d", "50-jhub-broker-auth.py")).read()
    assert "LiveGitLabOAuthenticator" in fragment and SECRET not in fragment
    # the encrypted secret is what the hub loads
    from traitlets.config import PyFileConfigLoader
    cfg = PyFileConfigLoader("50-jhub-broker-auth.py", path=os.path.join(hub.dir, "conf.d")).load_config()
    assert cfg.LiveGitLabOAuthenticator.client_secret == SECRET


# ---------------------------------------------------------------- the OAuth test, against the Check-in stand-in
OIDC_ID, OIDC_SECRET = "hub-oauth-test", "oidc-Client-Secret-77f3e1d0"
ROBOT_ID, ROBOT_SECRET = "robot-no-login", "robot-Client-Secret-5a1c"
CALLBACK = "https://hub.example.org/hub/oauth_callback"


@pytest.fixture(scope="module")
def standin():
    """The Check-in stand-in (npm oidc-provider) with the client the hub would use, and a client that may not log
    users in (client credentials only)."""
    from jhub_broker.emulators.checkin import CheckinStandIn
    if not shutil.which("node"):
        pytest.skip("node is needed for the Check-in stand-in")
    d = world_readable_tmpdir("jb-standin-")
    s = CheckinStandIn([{"client_id": OIDC_ID, "client_secret": OIDC_SECRET, "redirect_uris": [CALLBACK]},
                        {"client_id": ROBOT_ID, "client_secret": ROBOT_SECRET, "redirect_uris": [CALLBACK],
                         "grant_types": ["client_credentials"], "response_types": []}], d)
    s.start()
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(d, ignore_errors=True)


def oidc_form(issuer, client_id=OIDC_ID, secret=OIDC_SECRET, callback=CALLBACK, kind="generic-oidc"):
    return {"kind": kind, "issuer": issuer, "client_id": client_id, "client_secret": secret,
            "oauth_callback_url": callback}


def steps_of(result):
    return {s["step"]: s for s in result["steps"]}


async def test_oauth_test_tells_a_working_client_from_each_mistake(auth_hub, standin):
    hub = auth_hub
    before = (await hub.api("GET", "auth/method")).json()["method"]
    fragment = os.path.join(hub.dir, "conf.d", "50-jhub-broker-auth.py")
    fragment_before = open(fragment).read() if os.path.exists(fragment) else None

    async def test(body, user="admin"):
        r = await hub.api("POST", "auth/method/test", user=user, json=body)
        assert OIDC_SECRET not in r.text and ROBOT_SECRET not in r.text
        return r

    # a correct issuer, client id, secret and callback URL: every check passes, and says so
    for kind in ("generic-oidc", "egi-checkin"):  # Check-in with its issuer pointed at the stand-in
        r = await test(oidc_form(standin.issuer, kind=kind))
        assert r.status_code == 200, r.text
        res = r.json()
        assert res["ok"] is True, res
        assert res["issuer"] == standin.issuer and res["client_id"] == OIDC_ID and res["kind"] == kind
        steps = steps_of(res)
        assert list(steps) == ["discovery", "signing keys", "client id and callback URL", "client secret"]
        assert all(s["ok"] is True for s in res["steps"]), res
        assert "can log in with these settings" in res["summary"]
        assert "invalid_grant" in steps["client secret"]["detail"]  # the test code, refused after the client

    # a wrong secret: the client id is known, the secret is what to fix
    res = (await test(oidc_form(standin.issuer, secret="not-the-secret-1234"))).json()
    steps = steps_of(res)
    assert res["ok"] is False
    assert steps["client id and callback URL"]["ok"] is True
    assert steps["client secret"]["ok"] is False
    assert "invalid_client" in steps["client secret"]["detail"]
    assert "secret is wrong" in steps["client secret"]["detail"]
    assert "not-the-secret-1234" not in str(res)

    # a wrong client id: the issuer does not know it
    res = (await test(oidc_form(standin.issuer, client_id="hub-oauth-tset"))).json()
    steps = steps_of(res)
    assert res["ok"] is False
    assert steps["client id and callback URL"]["ok"] is False
    assert "does not know the client id hub-oauth-tset" in steps["client id and callback URL"]["detail"]
    assert steps["client secret"]["ok"] is False and "unknown" in steps["client secret"]["detail"]

    # a callback URL the client does not have
    res = (await test(oidc_form(standin.issuer, callback="https://other.example.org/hub/oauth_callback"))).json()
    steps = steps_of(res)
    assert res["ok"] is False and steps["client secret"]["ok"] is True
    assert steps["client id and callback URL"]["ok"] is False
    assert "add it to the client's redirect URIs" in steps["client id and callback URL"]["detail"]

    # right id and secret, but a client that may not log users in (no authorization-code flow)
    res = (await test(oidc_form(standin.issuer, client_id=ROBOT_ID, secret=ROBOT_SECRET))).json()
    steps = steps_of(res)
    assert res["ok"] is False
    assert "authorization-code" in steps["client secret"]["detail"]
    assert "authorization code" in steps["client id and callback URL"]["detail"]

    # an issuer nobody listens on, and a web server that is not an OpenID provider (the hub itself)
    from jhub_broker.emulators.checkin import free_port as _free
    nowhere = f"http://127.0.0.1:{_free()}/auth/realms/egi"
    res = (await test(oidc_form(nowhere))).json()
    assert res["ok"] is False and [s["step"] for s in res["steps"]] == ["discovery"]
    assert "not reachable" in res["steps"][0]["detail"] and "Check the issuer URL" in res["steps"][0]["detail"]
    res = (await test(oidc_form(hub.hub + "/hub"))).json()
    assert res["ok"] is False and [s["step"] for s in res["steps"]] == ["discovery"]
    assert "not an OpenID configuration" in res["steps"][0]["detail"]
    assert "issuer URL is wrong" in res["steps"][0]["detail"]
    # the issuer's own page, but under another name than it calls itself
    res = (await test(oidc_form(standin.issuer.replace("127.0.0.1", "localhost")))).json()
    assert res["ok"] is False and f"set the issuer URL to {standin.issuer}" in res["steps"][0]["detail"]

    # not OAuth; and a secret left empty with no stored secret of this method
    r = await test({"kind": "pam"})
    assert r.status_code == 400 and "not an OAuth method" in r.json()["message"]
    r = await test(oidc_form(standin.issuer, secret=""))
    assert r.status_code == 400 and "Client secret is required" in r.json()["message"]

    # only hub admins may run it
    r = await test(oidc_form(standin.issuer), user="alice")
    assert r.status_code == 403 and "hub admin" in r.text

    # testing changed nothing; it is audited, without the secret
    assert (await hub.api("GET", "auth/method")).json()["method"] == before
    assert (open(fragment).read() if os.path.exists(fragment) else None) == fragment_before
    audit = (await hub.api("GET", "auth/audit")).json()["actions"]
    tests = [a for a in audit if a["action"] == "auth:method-test"]
    assert len(tests) >= 9
    assert any(a["result"] == "ok" and a["detail"] == f"generic-oidc {standin.issuer} client {OIDC_ID}: passed"
               for a in tests)
    assert any(a["result"] == "failed" and "client secret" in a["detail"] for a in tests)
    assert OIDC_SECRET not in str(audit) and ROBOT_SECRET not in str(audit) and "not-the-secret" not in str(audit)
    assert not [a for a in tests if a["user"] != "admin"]


async def test_oauth_test_from_the_page_shows_the_result_escaped(auth_hub, standin):
    hub = auth_hub
    base = hub.client.base + hub.service
    evil = '<img src=x onerror="alert(1)">'

    def flow():
        s, xsrf = _browser(hub, "admin")
        page = s.get(base + "auth/method", timeout=30)
        assert 'formaction="' in page.text and "api/auth/method/test" in page.text
        form = {"_xsrf": xsrf, **oidc_form(standin.issuer)}
        no_xsrf = s.post(base + "api/auth/method/test", data={k: v for k, v in form.items() if k != "_xsrf"},
                         allow_redirects=False, timeout=60)
        good = s.post(base + "api/auth/method/test", data=form, allow_redirects=False, timeout=60)
        bad = s.post(base + "api/auth/method/test", data={**form, "client_id": evil}, allow_redirects=False,
                     timeout=60)
        return no_xsrf, good, bad

    no_xsrf, good, bad = await asyncio.to_thread(flow)
    assert no_xsrf.status_code == 403
    for r in (good, bad):
        assert r.status_code == 200, r.text[:500]
        assert r.headers["Content-Type"].startswith("text/html")
        assert OIDC_SECRET not in r.text
        assert r.text.count("<form") == r.text.count('name="_xsrf"')
    assert f"OAuth test of {standin.issuer}: passed" in good.text
    assert "can log in with these settings" in good.text
    assert good.text.count('class="step-ok"') == 4
    # the tested settings stay in the form (not the secret), that method's form is open
    assert f'value="{OIDC_ID}"' in good.text and f'value="{standin.issuer}"' in good.text
    assert "FAILED" in bad.text
    assert "<img src=x" not in bad.text
    assert "&lt;img src=x onerror=" in bad.text  # in the result and in the kept form field
    assert 'class="step-failed"' in bad.text


async def test_oauth_check_times_out_and_never_repeats_the_secret():
    """The check itself: a silent server times out with a clear message; a provider echoing the secret back
    in its error is scrubbed."""
    import json as _json
    import socket
    from tornado.httpserver import HTTPServer
    from tornado.web import Application
    from jhub_broker.services.authadmin.oauthcheck import check_oauth

    secret = "Echoed-Secret/With+Odd=Chars-91"
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts, never answers
    try:
        res = await check_oauth(f"http://127.0.0.1:{silent.getsockname()[1]}", "c", secret, timeout=1)
    finally:
        silent.close()
    assert res["ok"] is False and "no answer in time" in res["steps"][0]["detail"]

    class Doc(RequestHandler):
        def get(self):
            base = f"http://127.0.0.1:{port}"
            self.finish({"issuer": base, "authorization_endpoint": base + "/auth", "token_endpoint": base + "/token",
                         "jwks_uri": base + "/jwks"})

    class Keys(RequestHandler):
        def get(self):
            self.finish({"keys": [{"kty": "RSA", "kid": "k"}]})

    class Token(RequestHandler):
        def post(self):
            got = self.get_body_argument("client_secret")
            self.set_status(401)
            self.set_header("Content-Type", "application/json")
            self.finish(_json.dumps({"error": "invalid_client",
                                     "error_description": f"secret {got} / {quote(got, safe='')} is wrong"}))

    class PlainDoc(RequestHandler):  # a token endpoint on another host, over plain HTTP
        def get(self):
            base = f"http://127.0.0.1:{port}/plain"
            self.finish({"issuer": base, "authorization_endpoint": "http://192.0.2.1/auth",
                         "token_endpoint": "http://192.0.2.1/token"})

    from urllib.parse import quote
    app = Application([("/.well-known/openid-configuration", Doc), ("/jwks", Keys), ("/token", Token),
                       ("/plain/.well-known/openid-configuration", PlainDoc)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        res = await check_oauth(f"http://127.0.0.1:{port}", "c", secret, timeout=5)
        plain = await check_oauth(f"http://127.0.0.1:{port}/plain", "c", secret, timeout=2)
    finally:
        server.stop()
    assert plain["ok"] is False
    assert steps_of(plain)["client secret"]["detail"].startswith("not sent: the token endpoint")
    steps = steps_of(res)
    assert steps["client secret"]["ok"] is False
    assert "the issuer says: secret ••• / ••• is wrong" in steps["client secret"]["detail"]
    assert secret not in str(res) and quote(secret, safe="") not in str(res)
    assert steps["client id and callback URL"]["ok"] is None  # no callback URL given: not checked




async def test_dummy_login_is_not_offered_unless_the_operator_allows_it(auth_hub):
    """Dummy lets anyone in as any allowed name (admins too): off unless BrokerService allows it."""
    hub = auth_hub
    fragment = os.path.join(hub.dir, "conf.d", "50-jhub-broker-auth.py")
    before = open(fragment).read() if os.path.exists(fragment) else None
    offered = (await hub.api("GET", "auth/method")).json()["methods"]
    assert "dummy" not in offered and {"egi-checkin", "generic-oidc", "gitlab", "azuread", "native", "pam"} <= \
        set(offered)
    for body in ({"kind": "dummy"}, {"kind": "dummy", "password": SECRET}):
        r = await hub.api("POST", "auth/method", json=body)
        assert r.status_code == 400, r.text
        assert "BrokerService.allow_insecure_login_methods" in r.json()["message"] and SECRET not in r.text

    def page_flow():
        s, xsrf = _browser(hub, "admin")
        page = s.get(hub.client.base + hub.service + "auth/method", timeout=30)
        form = s.post(hub.client.base + hub.service + "api/auth/method", allow_redirects=False, timeout=60,
                      data={"_xsrf": xsrf, "kind": "dummy", "password": SECRET})
        return page, form
    page, form = await asyncio.to_thread(page_flow)
    assert page.status_code == 200 and 'value="dummy"' not in page.text and "Dummy (tests" not in page.text
    assert 'id="insecure-not-offered"' in page.text
    assert form.status_code == 400 and "allow_insecure_login_methods" in form.text and SECRET not in form.text
    assert (open(fragment).read() if os.path.exists(fragment) else None) == before


BAD_NAMES = ["bob@egi.eu\x00", "\u202ebob@egi.eu", "bob\u200b@egi.eu", "bob\x1b[31m@egi.eu", "bob\u2028x"]


async def test_usernames_with_control_or_bidi_characters_are_refused(auth_hub):
    hub = auth_hub
    from urllib.parse import quote
    for name in BAD_NAMES:
        for path in ("auth/allowed-users", "auth/admins"):
            r = await hub.api("POST", path, json={"name": name})
            assert r.status_code == 400, (path, repr(name), r.status_code, r.text[:300])
            msg = r.json()["message"]
            assert "control or invisible character U+" in msg and "type the name without it" in msg, msg
        for path in (f"auth/allowed-users/{quote(name, safe='')}", f"auth/admins/{quote(name, safe='')}"):
            r = await hub.api("DELETE", path)
            assert r.status_code == 400, (path, r.status_code, r.text[:300])

    def form():  # the page's form: the same 400, on an HTML page
        s, xsrf = _browser(hub, "admin")
        return s.post(hub.client.base + hub.service + "api/auth/allowed-users", allow_redirects=False,
                      data={"_xsrf": xsrf, "name": "\u202eadmin"}, timeout=30)
    r = await asyncio.to_thread(form)
    assert r.status_code == 400 and "U+202E" in r.text and "RIGHT-TO-LEFT OVERRIDE" in r.text
    st = (await hub.api("GET", "auth")).json()
    names = [u["name"] for u in st["hub_users"]] + st["live"]["allowed_users"] + st["live"]["admin_users"]
    assert not [n for n in names if not n.isprintable()], names
    assert "bob@egi.eu" not in names  # not made under a cleaned-up name either


async def test_gitlab_azuread_and_pam_are_configured_and_validated(auth_hub):
    """Each method through the page's path: built, rendered, validated in a fresh interpreter, written; the
    hub would load exactly these settings (the authenticator instantiated from the written file)."""
    from traitlets.config import PyFileConfigLoader
    from traitlets.utils.importstring import import_item
    from jhub_broker.services.authadmin.validate import validate
    hub = auth_hub
    callback = "https://hub.example.org/hub/oauth_callback"
    forms = {
        "gitlab": {"gitlab_url": "https://gitlab.example.org", "allowed_gitlab_groups": "physics\nchem/lab",
                   "client_id": "gl-app", "client_secret": SECRET, "oauth_callback_url": callback},
        "azuread": {"tenant_id": "3f2a9c1e-0000-4000-8000-5a1e00000042", "client_id": "az-app",
                    "client_secret": SECRET, "oauth_callback_url": callback, "username_pattern": "^[a-z.@-]+$"},
        "pam": {"username_pattern": "^[a-z_][a-z0-9_-]*$"},
    }
    d = os.path.join(hub.dir, "conf.d")
    for kind, form in forms.items():
        r = await hub.api("POST", "auth/method", json={"kind": kind, **form})
        assert r.status_code == 202, (kind, r.text)
        assert r.json()["restart"]["state"] == "pending-restart" and SECRET not in r.text
        path = os.path.join(d, "50-jhub-broker-auth.py")
        assert SECRET not in open(path).read()
        cfg = PyFileConfigLoader("50-jhub-broker-auth.py", path=d).load_config()
        cls_name = cfg.JupyterHub.authenticator_class
        assert validate(path, ["client_id"] if kind != "pam" else []) == {"ok": True, "class": cls_name,
                                                                         "errors": []}
        auth = import_item(cls_name)(config=cfg)
        if kind == "gitlab":
            assert cls_name.endswith("LiveGitLabOAuthenticator")
            assert auth.authorize_url == "https://gitlab.example.org/oauth/authorize"
            assert set(auth.allowed_gitlab_groups) == {"physics", "chem/lab"}
            assert auth.client_id == "gl-app" and auth.client_secret == SECRET
        elif kind == "azuread":
            assert cls_name.endswith("LiveAzureAdOAuthenticator")
            assert auth.authorize_url.startswith(
                "https://login.microsoftonline.com/3f2a9c1e-0000-4000-8000-5a1e00000042/oauth2/")
            assert auth.client_secret == SECRET and auth.oauth_callback_url == callback
            assert auth.validate_username("ann@lab") and not auth.validate_username("Ann Other")
        else:
            assert cls_name.endswith("LivePAMAuthenticator")
            assert auth.validate_username("ann") and not auth.validate_username("Ann")
    # what each method needs is asked for before anything is written
    for kind, form, missing in (("gitlab", {**forms["gitlab"], "client_id": ""}, "Client id is required"),
                                ("azuread", {**forms["azuread"], "tenant_id": ""}, "Tenant id is required"),
                                ("gitlab", {**forms["gitlab"], "gitlab_url": "gitlab.example.org"}, "http(s) URL"),
                                ("azuread", {**forms["azuread"], "client_secret": ""}, "Client secret is required"),
                                ("pam", {"username_pattern": "(["}, "not a regular expression")):
        r = await hub.api("POST", "auth/method", json={"kind": kind, **form})
        assert r.status_code == 400 and missing in r.json()["message"], (kind, r.text)
    assert (await hub.api("GET", "auth/method")).json()["method"]["kind"] == "pam"

# ---------------------------------------------------------------- part 2: a real hub, restarted
def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_hub(prefix, configure_call, extra="", forbidden=(), port=None, cgroup=""):
    """A real ``python -m jupyterhub`` (tests/services/hubctl.py) in a fresh directory, configured by
    ``configure_call`` (a ``jhub_broker.configure(c, ...)`` line that may use ``{d}``) plus ``extra``; stopped
    at the end, when none of ``forbidden`` may appear in its log. With ``cgroup`` (a cgroup v2 directory) the hub
    runs in it and hubctl's restart kills all of it. Yields ``(dir, url)``."""
    d = world_readable_tmpdir(prefix)
    if cgroup:
        with open(os.path.join(d, "hub.cgroup"), "w") as f:
            f.write(cgroup)
    port, hub_port, api_port = port or free_port(), free_port(), free_port()
    write_config(os.path.join(d, "jupyterhub_config.py"), configure_call.replace("{d}", d) + f"""
c.JupyterHub.bind_url = "http://127.0.0.1:{port}/"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.JupyterHub.db_url = "sqlite:///{d}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{d}/cookie_secret"
c.ConfigurableHTTPProxy.pid_file = "{d}/proxy.pid"
""" + extra)
    subprocess.run([sys.executable, HUBCTL, "start", d], check=True)
    try:
        yield d, f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([sys.executable, HUBCTL, "stop", d])
        log = open(os.path.join(d, "hub.log")).read() if os.path.exists(os.path.join(d, "hub.log")) else ""
        shutil.rmtree(d, ignore_errors=True)
        for secret in forbidden:
            assert secret not in log


@pytest.fixture(scope="module")
def real_hub():
    token = Fernet.generate_key().decode()[:32]
    call = f"""
jhub_broker.configure(c, spawner="jupyterhub.spawner.SimpleLocalProcessSpawner", authenticator="dummy",
                      admin_users=["admin"], environments_root="{{d}}/envs", auth_config_dir="{{d}}/conf.d",
                      restart_timeout=25, restart_command=[sys.executable, {HUBCTL!r}, "restart", "{{d}}"],
                      service_args=["--BrokerService.allow_insecure_login_methods=True"])"""
    with running_hub("jb-realhub-", call, f"c.JupyterHub.api_tokens = {{{token!r}: 'admin'}}\n",
                     forbidden=[SECRET]) as (d, url):
        yield type("RealHub", (), {"dir": d, "url": url, "token": token, "client": Client(url)})()


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


# ---------------------------------------------------------------- part 3: a small site on NativeAuthenticator
PASSWORDS = {"boss": "Boss-Password-2026!", "eve": "Eve-Password-2026!", "carol": "Carol-Password-2026!",
             "frank": "Frank-Password-2026!"}


@pytest.fixture(scope="module")
def native_hub():
    """A real `python -m jupyterhub` configured with ``jhub_broker.configure(authenticator="native")`` and one
    bootstrap admin, ``boss``, who has no account yet."""
    call = """
jhub_broker.configure(c, spawner="jupyterhub.spawner.SimpleLocalProcessSpawner", authenticator="native",
                      admin_users=["boss"], environments_root="{d}/envs", auth_config_dir="{d}/conf.d")"""
    with running_hub("jb-native-", call, forbidden=PASSWORDS.values()) as (d, url):
        yield type("NativeHub", (), {"dir": d, "url": url, "client": Client(url)})()


def native_signup(hub_url, username, password):
    """The sign-up form, as a browser posts it; returns the page's message."""
    s = requests.Session()
    r = s.get(hub_url + "/hub/signup", timeout=30)
    assert r.status_code == 200, r.text[:300]
    r = s.post(hub_url + "/hub/signup", data={
        "_xsrf": s.cookies.get("_xsrf"), "username": username, "signup_password": password,
        "signup_password_confirmation": password}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    m = re.search(r'<div class="alert[^"]*"[^>]*>(.*?)</div>', r.text, re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(1) if m else r.text)).strip()


def native_login(hub_url, username, password):
    """(session, logged in?, the login page's error if not)."""
    s = requests.Session()
    s.get(hub_url + "/hub/login", timeout=30)
    r = s.post(hub_url + "/hub/login", params={"_xsrf": s.cookies.get("_xsrf")},
               data={"username": username, "password": password, "_xsrf": s.cookies.get("_xsrf")},
               allow_redirects=False, timeout=30)
    m = re.search(r'<p class="login_error">(.*?)</p>', r.text, re.S)
    return s, r.status_code == 302, re.sub(r"\s+", " ", m.group(1)).strip() if m else ""


def broker_form(hub, session, path, data):
    """Post a form of the broker's auth page in ``session`` (the admin's browser)."""
    base = hub.url + "/services/broker/"
    page = session.get(base + "auth", timeout=60)
    assert page.status_code == 200, page.text[:300]
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    return session.post(base + path, data={"_xsrf": xsrf, **data}, allow_redirects=False, timeout=60)


async def test_native_site_bootstrap_admin_strangers_and_live_allowed_users(native_hub):
    hub = native_hub
    await hub.client.wait_for("/hub/login", timeout=90)
    await hub.client.wait_for("/services/broker/api/health", timeout=90)
    pid = open(os.path.join(hub.dir, "hub.pid")).read()
    run = asyncio.to_thread
    login_page = (await hub.client.request("GET", "/hub/login")).text
    assert 'name="password"' in login_page and "signup" in login_page.lower()  # NativeAuthenticator's page

    # 1. the bootstrap admin signs up and logs in at once: nobody has to approve the first admin
    msg = await run(native_signup, hub.url, "boss", PASSWORDS["boss"])
    assert "signup was successful" in msg and "log in" in msg, msg
    boss, ok, err = await run(native_login, hub.url, "boss", PASSWORDS["boss"])
    assert ok, f"the bootstrap admin is locked out: {err!r}"
    r = await run(boss.get, hub.url + "/hub/authorize", timeout=30)
    assert r.status_code == 200, "boss is a hub admin (NativeAuthenticator's approval page)"
    _, ok, err = await run(native_login, hub.url, "boss", "wrong-password")
    assert not ok and err == "Invalid username or password."

    def stale_form():  # a login form without its _xsrf: the login page again, with the reason
        s = requests.Session()
        s.get(hub.url + "/hub/login", timeout=30)
        return s.post(hub.url + "/hub/login", data={"username": "boss", "password": PASSWORDS["boss"]},
                      allow_redirects=False, timeout=30)
    r = await run(stale_form)
    assert r.status_code == 403 and "Login form invalid or expired" in r.text and 'name="password"' in r.text

    # 2. a stranger may sign up but not log in, and is told why (not "Invalid username or password")
    msg = await run(native_signup, hub.url, "eve", PASSWORDS["eve"])
    assert "sent to the admin" in msg, msg
    _, ok, err = await run(native_login, hub.url, "eve", PASSWORDS["eve"])
    assert not ok
    assert "has not been authorized by an administrator yet" in err, err

    # 3. the admin allows carol on the broker's page; she signs up and logs in, no restart
    r = await run(broker_form, hub, boss, "api/auth/allowed-users", {"name": "carol"})
    assert r.status_code == 302, r.text[:300]
    msg = await run(native_signup, hub.url, "carol", PASSWORDS["carol"])
    assert "signup was successful" in msg, msg
    _, ok, err = await run(native_login, hub.url, "carol", PASSWORDS["carol"])
    assert ok, f"carol, allowed on the broker's page, cannot log in: {err!r}"

    # 4. eve, who signed up before anyone allowed her, gets in once the admin allows her on the broker's page
    r = await run(broker_form, hub, boss, "api/auth/allowed-users", {"name": "eve"})
    assert r.status_code == 302, r.text[:300]
    assert not (await run(native_login, hub.url, "eve", "Wrong-Password-2026!"))[1]
    _, ok, err = await run(native_login, hub.url, "eve", PASSWORDS["eve"])
    assert ok, f"eve, allowed after signing up, cannot log in: {err!r}"

    # 5. approval on NativeAuthenticator's own page works too (allow_all is off: the hub must not refuse her)
    await run(native_signup, hub.url, "frank", PASSWORDS["frank"])
    assert not (await run(native_login, hub.url, "frank", PASSWORDS["frank"]))[1]
    r = await run(boss.get, hub.url + "/hub/authorize/frank", timeout=30)
    assert r.status_code == 200, r.text[:300]
    _, ok, err = await run(native_login, hub.url, "frank", PASSWORDS["frank"])
    assert ok, f"frank, approved on /hub/authorize, cannot log in: {err!r}"

    # 6. removing carol on the broker's page ends her access at once (her account goes too)
    r = await run(broker_form, hub, boss, "api/auth/allowed-users/carol/delete", {})
    assert r.status_code == 302, r.text[:300]
    assert not (await run(native_login, hub.url, "carol", PASSWORDS["carol"]))[1]

    # 7. "only admins may log in" holds for approved accounts too; the bootstrap admin still gets in
    r = await run(broker_form, hub, boss, "api/auth/admins-only", {"enabled": "1"})
    assert r.status_code == 302, r.text[:300]
    assert not (await run(native_login, hub.url, "frank", PASSWORDS["frank"]))[1]
    assert (await run(native_login, hub.url, "boss", PASSWORDS["boss"]))[1]
    r = await run(broker_form, hub, boss, "api/auth/admins-only", {"enabled": ""})
    assert r.status_code == 302
    assert (await run(native_login, hub.url, "frank", PASSWORDS["frank"]))[1]

    assert open(os.path.join(hub.dir, "hub.pid")).read() == pid, "all of it without restarting the hub"
    log = open(os.path.join(hub.dir, "hub.log")).read()
    assert log.count("JupyterHub is now running") == 1

    # 8. the login-method page can choose NativeAuthenticator too: the fragment validates (no hub database in
    #    the validating interpreter), and after the restart accounts and approvals are still there
    r = await run(broker_form, hub, boss, "api/auth/method", {"kind": "native", "minimum_password_length": "12",
                                                              "username_pattern": "", "login_service": ""})
    assert r.status_code == 302, r.text[:500]
    fragment = open(os.path.join(hub.dir, "conf.d", "50-jhub-broker-auth.py")).read()
    assert "LiveNativeAuthenticator" in fragment and "open_signup = False" in fragment
    r = await run(boss.get, hub.url + "/services/broker/api/auth/restart", timeout=60)
    assert r.json()["restart"]["state"] == "pending-restart", r.text
    subprocess.run([sys.executable, HUBCTL, "restart", hub.dir], check=True)
    await hub.client.wait_for("/hub/login", timeout=90)
    assert (await run(native_login, hub.url, "boss", PASSWORDS["boss"]))[1]
    assert (await run(native_login, hub.url, "frank", PASSWORDS["frank"]))[1]
    msg = await run(native_signup, hub.url, "gina", "Short-pw-1")  # 10 < 12 characters
    assert "at least 12 characters" in msg, msg
