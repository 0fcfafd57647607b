"""Who holds which secret: the hub's crypt key reaches the broker service as a 0600 file, never through the
service's environment (JupyterHub stores that in its database); the product's state files are private.

A real ``python -m jupyterhub`` configured by ``jhub_broker.configure`` (tests/services/hubctl.py).
"""
import os
import re
import stat
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet

from tests.services.conftest import Client
from tests.services.fuzz import hypothesis, json_values
from tests.services.test_authadmin import running_hub

KEY = Fernet.generate_key().decode()
SECRET = "gitlab-Client-Secret-7731-never-shown"


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def service_pid(marker):
    """Pid of the broker service whose command line contains ``marker``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"jhub_broker.services" in cmd and any(marker.encode() in part for part in cmd):
            return int(entry)
    raise AssertionError("the broker service is not running")


@pytest.fixture(scope="module")
def keyed_hub():
    """The hub runs with $JUPYTERHUB_CRYPT_KEY in its environment (as an operator sets it, e.g. in systemd)."""
    token = Fernet.generate_key().decode()[:32]
    call = """
jhub_broker.configure(c, spawner="jupyterhub.spawner.SimpleLocalProcessSpawner", authenticator="dummy",
                      admin_users=["admin"], environments_root="{d}/envs", auth_config_dir="{d}/conf.d")"""
    old = os.environ.get("JUPYTERHUB_CRYPT_KEY")
    os.environ["JUPYTERHUB_CRYPT_KEY"] = KEY  # inherited by the hub started below, and only by it
    try:
        with running_hub("jb-sechub-", call, f"c.JupyterHub.api_tokens = {{{token!r}: 'admin'}}\n",
                         forbidden=[KEY, SECRET]) as (d, url):
            if old is None:
                del os.environ["JUPYTERHUB_CRYPT_KEY"]
            else:
                os.environ["JUPYTERHUB_CRYPT_KEY"] = old
            yield type("KeyedHub", (), {"dir": d, "url": url, "token": token, "client": Client(url)})()
    finally:
        if old is None:
            os.environ.pop("JUPYTERHUB_CRYPT_KEY", None)
        else:
            os.environ["JUPYTERHUB_CRYPT_KEY"] = old


async def test_the_crypt_key_is_in_no_database_and_no_service_environment(keyed_hub):
    hub = keyed_hub
    await hub.client.wait_for("/services/broker/api/health", timeout=90)
    # the service encrypts a secret with the key it reads from its file ...
    r = await hub.client.request("POST", "/services/broker/api/auth/method", token=hub.token,
                                 json={"kind": "gitlab", "client_id": "broker-test", "client_secret": SECRET,
                                       "oauth_callback_url": hub.url + "/hub/oauth_callback"})
    assert r.status_code == 202, r.text
    assert SECRET not in r.text
    fragment = os.path.join(hub.dir, "conf.d", "50-jhub-broker-auth.py")
    assert mode(fragment) == 0o600
    (token,) = re.findall(r"client_secret = decrypt\('([^']+)'\)", open(fragment).read())
    # ... and the hub, which has the key in its environment, decrypts it
    from jhub_broker.authenticator.secrets import crypter
    assert crypter({"JUPYTERHUB_CRYPT_KEY": KEY}).decrypt(token.encode()).decode() == SECRET

    # the key is nowhere in the hub's database (services.environment is stored there) ...
    db_files = [os.path.join(hub.dir, n) for n in os.listdir(hub.dir) if n.startswith("jupyterhub.sqlite")]
    assert db_files
    for path in db_files:
        with open(path, "rb") as f:
            data = f.read()
        assert KEY.encode() not in data, path
        assert b"JUPYTERHUB_CRYPT_KEY" not in data, path
    # ... nor in the service's environment; the service has the file's path, a 0600 file in a 0700 dir
    envs = os.path.join(hub.dir, "envs")
    pid = service_pid(envs)
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read()
    assert KEY.encode() not in environ
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read()
    assert KEY.encode() not in cmdline
    key_file = os.path.join(envs, ".state", "hub-crypt-key")
    assert f"--BrokerService.crypt_key_file={key_file}".encode() in cmdline
    assert open(key_file).read() == KEY
    assert mode(key_file) == 0o600
    # the service's own state is private too
    assert mode(os.path.join(envs, ".state")) == 0o700
    assert mode(os.path.join(envs, ".state", "broker.sqlite")) == 0o600
    assert mode(os.path.join(envs, ".cache")) == 0o700
    # the environments themselves stay readable by users
    assert mode(envs) == 0o755


def test_service_config_keeps_secrets_out_of_the_service_environment(tmp_path, monkeypatch):
    from traitlets.config import Config
    from jhub_broker.services.config import service_config
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", KEY)
    monkeypatch.setenv("UV_INDEX_URL", "https://pypi.example.org/simple")
    c = Config()
    with pytest.warns(UserWarning, match="PIP_INDEX_PASSWORD"):
        service_config(c, port=18125, environments_root=str(tmp_path / "envs"),
                       environment={"PIP_INDEX_PASSWORD": "hunter2", "JHUB_BROKER_RESTART_COMMAND": "[]"})
    (svc,) = c.JupyterHub.services
    env = svc["environment"]
    assert env["UV_INDEX_URL"] == "https://pypi.example.org/simple" and env["JHUB_BROKER_RESTART_COMMAND"] == "[]"
    assert "PIP_INDEX_PASSWORD" not in env and "JUPYTERHUB_CRYPT_KEY" not in env
    assert KEY not in str(svc)
    key_file = tmp_path / "envs" / ".state" / "hub-crypt-key"
    assert f"--BrokerService.crypt_key_file={key_file}" in svc["command"]
    assert key_file.read_text() == KEY and mode(key_file) == 0o600 and mode(key_file.parent) == 0o700
    # without auth_admin the service has no role at all; with it, the admin role (only admins grant admin)
    assert not [r for r in c.JupyterHub.load_roles if "broker" in r.get("services", [])]
    service_config(c, port=18126, name="broker2", environments_root=str(tmp_path / "envs"), auth_admin=True)
    assert [r["name"] for r in c.JupyterHub.load_roles if "broker2" in r.get("services", [])] == ["admin"]


def test_builds_get_a_minimal_environment(monkeypatch):
    from jhub_broker.services.environments.builder import build_environ
    source = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "JUPYTERHUB_API_TOKEN": "t0ken",
              "JUPYTERHUB_CRYPT_KEY": KEY, "JHUB_BROKER_CRYPT_KEY_FILE": "/x/key", "UV_INDEX_URL": "https://i/simple",
              "UV_INDEX_TOKEN": "t", "PIP_SECRET": "s", "HTTPS_PROXY": "http://proxy:3128", "AWS_SECRET_ACCESS_KEY": "a",
              "PYTHONPATH": "/srv/hub", "SSL_CERT_FILE": "/etc/ssl/certs/ca.pem", "MY_VAR": "x"}
    env = build_environ(home="/tmp/h", cache_dir="/c", source=source)
    assert set(env) == {"PATH", "HOME", "LANG", "UV_INDEX_URL", "HTTPS_PROXY", "SSL_CERT_FILE",
                        "PIP_DISABLE_PIP_VERSION_CHECK", "UV_NO_PROGRESS", "UV_CACHE_DIR", "PIP_CACHE_DIR"}
    assert env["HOME"] == "/tmp/h"
    # an operator may allow more, never a secret
    env = build_environ(allow=("MY_*", "UV_*", "JUPYTERHUB_API_TOKEN"), source=source)
    assert "MY_VAR" in env and "UV_INDEX_TOKEN" not in env and "JUPYTERHUB_API_TOKEN" not in env


def test_demo_state_files_are_private(tmp_path):
    """The demo's hub config, log and database (users' auth state) are 0600 before the hub writes them."""
    from jhub_broker.demo import launch_hub, write_hub_config
    state = tmp_path / "state"
    (state / "secrets").mkdir(parents=True)
    config = write_hub_config(str(state), 18127, str(tmp_path / "clouds.yaml"))
    assert mode(config) == 0o600
    broken = tmp_path / "broken_config.py"
    broken.write_text("raise SystemExit(3)\n")
    proc, log = launch_hub(str(state), str(broken), KEY)
    assert proc.wait(timeout=120) != 0
    for name in ("jupyterhub.sqlite", "jupyterhub.log"):
        assert mode(state / name) == 0o600, name
    assert KEY not in open(log).read()


def test_validation_never_fails_with_anything_but_a_clear_error():
    """Any JSON value in any field: a ValidationError (a 400 with a message), never another exception."""
    if hypothesis is None:
        pytest.skip("hypothesis is not installed")
    from jhub_broker.services.environments.validation import (ValidationError, normalize_requirements,
                                                              parse_requirement, validate_display_name,
                                                              validate_env_name)
    from jhub_broker.services.handlers import _list

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(json_values())
    def check(value):
        for f in (normalize_requirements, parse_requirement, validate_env_name,
                  lambda v: validate_display_name(v, "default"), lambda v: _list(v, "add")):
            try:
                f(value)
            except ValidationError as e:
                assert str(e) and len(str(e)) < 2000

    check()


if __name__ == "__main__":
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__]))
