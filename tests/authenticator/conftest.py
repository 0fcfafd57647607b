"""Real parts for authenticator tests: the Check-in stand-in (npm oidc-provider) and a real hub."""
import asyncio
import json
import os
import re
import shutil
import tempfile
from urllib.parse import urljoin

import pytest
import requests
from cryptography.fernet import Fernet

from jhub_broker.authenticator import CheckinAuthenticator
from jhub_broker.authenticator.s3.scope import add_s3_scope
from jhub_broker.emulators.checkin import ACCOUNTS_FILE, CheckinStandIn, default_node_modules, free_port

os.environ.setdefault("JUPYTERHUB_CRYPT_KEY", Fernet.generate_key().decode())
_bin = os.path.join(default_node_modules(), ".bin")
if os.path.isdir(_bin):
    os.environ["PATH"] = _bin + os.pathsep + os.environ["PATH"]

CLIENT_ID = "jupyterhub-test"
CLIENT_SECRET = "test-client-secret-not-real"
ENROL_URL = "https://aai.egi.eu/registry/co_petitions/start/coef:vo.example.eu"
# accounts only the tests need, besides the stand-in's researchers
TEST_ACCOUNTS = [
    # no VO entitlement; a groups claim (as a Keycloak or another OIDC provider would send one)
    {"username": "gina", "password": "gina-pw", "sub": "gina@egi.eu", "name": "Gina Groups",
     "email": "gina@example.org", "entitlements": [], "groups": ["hub-users", "hub-admins"]},
    # an IdP sending a subject that only looks like bob's: NUL, escape, right-to-left override appended
    {"username": "nul", "password": "nul-pw", "sub": "bob@egi.eu\u0000", "name": "Not Bob",
     "entitlements": ["urn:mace:egi.eu:group:vo.example.eu:role=member#aai.egi.eu"]},
    {"username": "esc", "password": "esc-pw", "sub": "bob@egi.eu\u001b[8m", "name": "Not Bob",
     "entitlements": ["urn:mace:egi.eu:group:vo.example.eu:role=member#aai.egi.eu"]},
    {"username": "bidi", "password": "bidi-pw", "sub": "bob@egi.eu\u202e", "name": "Not Bob",
     "entitlements": ["urn:mace:egi.eu:group:vo.example.eu:role=member#aai.egi.eu"]},
]


@pytest.fixture(scope="session")
def hub_port():
    return free_port()


@pytest.fixture(scope="session")
def checkin(tmp_path_factory, hub_port):
    """Access tokens live 20 s, so a test can watch them expire."""
    if not shutil.which("node"):
        pytest.skip("node is needed for the Check-in stand-in")
    d = tmp_path_factory.mktemp("checkin")
    with open(ACCOUNTS_FILE) as f:
        accounts = json.load(f)["accounts"]
    (d / "accounts.json").write_text(json.dumps({"accounts": accounts + TEST_ACCOUNTS}))
    s = CheckinStandIn([{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                         "redirect_uris": [f"http://127.0.0.1:{hub_port}/hub/oauth_callback"]}],
                       str(d), ttl={"access_token": 20}, accounts_file=str(d / "accounts.json"))
    s.start()
    yield s
    s.stop()


def hub_config(checkin, hub_port, services=(), **auth):
    chp = shutil.which("configurable-http-proxy")
    cfg = {
        "JupyterHub": {"authenticator_class": CheckinAuthenticator,
                       "bind_url": f"http://127.0.0.1:{hub_port}/",
                       # in memory: no jupyterhub_cookie_secret file in the working directory
                       "cookie_secret": os.urandom(32)},
        "Authenticator": {"allow_all": False},
        "CheckinAuthenticator": {
            "issuer": checkin.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "oauth_callback_url": f"http://127.0.0.1:{hub_port}/hub/oauth_callback",
            "allowed_entitlements": ["vo.example.eu"],
            "admin_entitlements": ["vo.example.eu:role=manager"],
            "enrolment_url": ENROL_URL,
            **auth,
        },
    }
    if services:
        cfg["JupyterHub"]["services"] = list(services)
        # every user may log in to the test services
        cfg["JupyterHub"]["extra_user_scopes"] = [f"access:services!service={s['name']}" for s in services]
    # as configure() does: servers' tokens may fetch their user's S3 credentials
    add_s3_scope(cfg)
    # not ./jupyterhub-proxy.pid: a hub started from the same directory (another test session) would stop
    # the proxy named there
    cfg["ConfigurableHTTPProxy"] = {"pid_file": os.path.join(tempfile.mkdtemp(prefix="jb-hub-"), "proxy.pid")}
    if chp:
        cfg["ConfigurableHTTPProxy"]["command"] = [chp]
    return cfg


@pytest.fixture
async def checkin_hub(hub_app, checkin, hub_port):
    """Start a real hub (MockHub + real proxy) with CheckinAuthenticator; stop its proxy after."""
    apps = []

    async def start(services=(), **auth):
        app = await hub_app(hub_config(checkin, hub_port, services, **auth))
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.proxy.stop()


def _browser_login(base_url, username, password, next_url="/hub/home"):
    """What a browser does: hub login -> provider form -> post -> consent -> hub callback."""
    s = requests.Session()
    r = s.get(f"{base_url}/hub/oauth_login", params={"next": next_url}, timeout=30)
    r.raise_for_status()
    m = re.search(r'<form method="post" action="([^"]+)"', r.text)
    assert m, f"no login form at {r.url}:\n{r.text[:500]}"
    r = s.post(urljoin(r.url, m.group(1)), data={"username": username, "password": password}, timeout=30)
    return s, r


@pytest.fixture
def browser_login(hub_port):
    async def login(username, password, next_url="/hub/home"):
        return await asyncio.to_thread(_browser_login, f"http://127.0.0.1:{hub_port}", username, password,
                                       next_url)
    return login
