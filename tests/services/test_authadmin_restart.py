"""The restart after a login-method change, against a real hub on EGI Check-in (the stand-in) that its restart
command restarts the way systemd does: every process of the hub's cgroup is killed.

- a switch after which the bootstrap admin could not log in (an issuer URL with a typo: the hub API answers 200,
  the login answers 500) is rolled back; an OAuth switch is checked against the provider it must send users to;
  Dummy (allowed here by the operator) serves its form although the site sets ``auto_login`` for Check-in;
- the restart helper leaves the hub's cgroup (``BrokerService.restart_helper_cgroup``), so it survives the kill and
  still rolls back.

The cgroup is a real cgroup v2 directory (there is no systemd here: ``hubctl.py`` plays ``systemctl restart`` with
``cgroup.kill``); where none can be made the site runs without one and only the cgroup checks are left out.
"""
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import pytest
import requests

from tests.authenticator.conftest import _browser_login
from tests.services.test_authadmin import (HUBCTL, OIDC_ID, OIDC_SECRET, Client, alogin, free_port, running_hub,
                                           wait_restart, world_readable_tmpdir)

FRAGMENT = "conf.d/50-jhub-broker-auth.py"
ENV_DUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "envdump.py")


def cgroup2_root():
    """A writable cgroup v2 mount, or None."""
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[2] == "cgroup2"]
    for m in mounts:
        probe = os.path.join(m, f"jb-probe-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            os.mkdir(probe)
            os.rmdir(probe)
            if os.path.exists(os.path.join(m, "cgroup.procs")):
                return m
        except OSError:
            continue
    return None


def procs(cg):
    try:
        with open(os.path.join(cg, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.fixture(scope="module")
def cgroups():
    """The hub's cgroup and the helper's sibling one; None where no cgroup can be made (the site then runs without,
    and only the cgroup checks are left out)."""
    root = cgroup2_root()
    if root is None:
        yield None
        return
    top = os.path.join(root, f"jb-auth-{os.getpid()}-{secrets.token_hex(3)}")
    os.mkdir(top)
    hub = os.path.join(top, "hub")
    os.mkdir(hub)
    try:
        yield {"hub": hub, "helper": os.path.join(top, "restart-helper")}
    finally:
        for cg in (hub, os.path.join(top, "restart-helper"), top):
            for _ in range(100):
                try:
                    if os.path.isdir(cg):
                        os.rmdir(cg)
                    break
                except OSError:  # a helper still finishing
                    time.sleep(0.2)


@pytest.fixture(scope="module")
def site(cgroups):
    """The real hub on Check-in (auto_login, bob@egi.eu the bootstrap admin), Dummy allowed by the operator."""
    from jhub_broker.emulators.checkin import CheckinStandIn
    if not shutil.which("node"):
        pytest.skip("node is needed for the Check-in stand-in")
    port = free_port()
    callback = f"http://127.0.0.1:{port}/hub/oauth_callback"
    sdir = world_readable_tmpdir("jb-standin-")
    standin = CheckinStandIn([{"client_id": OIDC_ID, "client_secret": OIDC_SECRET, "redirect_uris": [callback]}],
                             sdir)
    standin.start()
    token = secrets.token_hex(16)
    call = f"""
jhub_broker.configure(c, spawner="jupyterhub.spawner.SimpleLocalProcessSpawner", authenticator="egi-checkin",
                      auth_options={{"issuer": {standin.issuer!r}, "client_id": {OIDC_ID!r},
                                    "client_secret": {OIDC_SECRET!r}, "oauth_callback_url": {callback!r},
                                    "allowed_entitlements": ["vo.example.eu"],
                                    "admin_entitlements": ["vo.example.eu:role=manager"],
                                    "s3_endpoints": {{"s3": {{"backend": "static", "url": "http://127.0.0.1:9",
                                                             "secrets_file": "{{d}}/s3-keys.yaml"}}}}}},
                      admin_users=["bob@egi.eu"], environments_root="{{d}}/envs", auth_config_dir="{{d}}/conf.d",
                      restart_timeout=25, restart_command=[sys.executable, {HUBCTL!r}, "restart", "{{d}}"],
                      service_args=["--BrokerService.allow_insecure_login_methods=True",
                                    "--BrokerService.restart_helper_cgroup={(cgroups or {}).get('helper', '')}"])"""
    extra = (f"c.Authenticator.auto_login = True\nc.JupyterHub.api_tokens = {{{token!r}: 'bob@egi.eu'}}\n"
             # a user's server records the environment the hub gave it, then runs (as root: the hub's user)
             f"c.Spawner.cmd = [sys.executable, {ENV_DUMP!r}]\nc.Spawner.args = ['--allow-root']\n"
             "c.Spawner.start_timeout = 60\nc.Spawner.http_timeout = 60\n"
             "c.Spawner.environment['JB_HUB_DIR'] = os.path.dirname(os.path.abspath(__file__))\n")
    try:
        with running_hub("jb-checkin-site-", call, extra, forbidden=[OIDC_SECRET], port=port,
                         cgroup=(cgroups or {}).get("hub", "")) as (d, url):
            yield type("Site", (), {"dir": d, "url": url, "token": token, "client": Client(url), "standin": standin,
                                    "callback": callback, "cgroups": cgroups})()
    finally:
        standin.stop()
        shutil.rmtree(sdir, ignore_errors=True)


async def switch(site, body):
    r = await site.client.request("POST", "/services/broker/api/auth/method", token=site.token, json=body)
    assert r.status_code == 202, r.text
    return await wait_restart(site)


def first_external_redirect(url):
    """Where the hub's login sends a browser (following the hub's own redirects)."""
    s = requests.Session()
    for _ in range(5):
        r = s.get(url, allow_redirects=False, timeout=30)
        if r.status_code not in (301, 302, 303, 307, 308):
            return r
        url = requests.compat.urljoin(url, r.headers["Location"])
        if not url.startswith(r.url.split("/hub/")[0]):
            return url
    raise AssertionError("redirect loop")


async def bob_logs_in(site):
    _, r = await asyncio.to_thread(_browser_login, site.url, "bob", "bob-pw")
    return r.status_code == 200 and r.url.startswith(site.url + "/hub/")


async def hub_api(site, method, path, **kw):
    r = await site.client.request(method, "/hub/api/" + path, token=site.token, **kw)
    assert r.status_code < 400, (method, path, r.status_code, r.text[:300])
    return r.json() if r.text else None


async def server_env(site, name):
    """Start ``name``'s server; the environment the hub gave it; stop it."""
    path = os.path.join(site.dir, f"server-env-{name}.json")
    if os.path.exists(path):
        os.unlink(path)
    await hub_api(site, "POST", f"users/{name}/server")
    deadline = time.monotonic() + 90
    while not (await hub_api(site, "GET", f"users/{name}"))["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, f"{name}'s server did not start"
        await asyncio.sleep(0.5)
    with open(path) as f:
        env = json.load(f)
    await hub_api(site, "DELETE", f"users/{name}/server")
    while (await hub_api(site, "GET", f"users/{name}"))["servers"]:
        assert time.monotonic() < deadline + 60, f"{name}'s server did not stop"
        await asyncio.sleep(0.5)
    return env


async def broker(site, method, path, body):
    r = await site.client.request(method, "/services/broker/api/" + path, token=site.token, json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_vo_rules_and_s3_grants_edited_live_apply_at_the_next_login(site):
    """carol is in vo.other.eu only (her vo.example.eu entitlement comes from another authority)."""
    await site.client.wait_for("/services/broker/api/health", timeout=120)
    pid = open(os.path.join(site.dir, "hub.pid")).read()

    async def carol_logs_in():
        _, r = await asyncio.to_thread(_browser_login, site.url, "carol", "carol-pw")
        return r.status_code == 200 and r.url.startswith(site.url + "/hub/")

    assert not await carol_logs_in()
    await broker(site, "PUT", "auth/rules", {"allowed_entitlements": ["vo.other.eu"]})
    assert await carol_logs_in(), "a new VO rule lets carol in at her next login"
    assert (await hub_api(site, "GET", "users/carol@egi.eu"))["admin"] is False
    assert "JHUB_BROKER_S3_PROFILES" not in await server_env(site, "carol@egi.eu")  # no grant yet

    await broker(site, "PUT", "auth/s3-grants", {"grants": [
        {"bucket": "other-vo-data", "level": "read", "entitlements": ["vo.other.eu"]},
        {"bucket": "example-only", "level": "write", "entitlements": ["vo.example.eu"]}]})
    await broker(site, "PUT", "auth/rules", {"admin_entitlements": ["vo.other.eu:role=member"]})
    assert await carol_logs_in()
    assert (await hub_api(site, "GET", "users/carol@egi.eu"))["admin"] is True, "admin rule at the next login"
    env = await server_env(site, "carol@egi.eu")
    assert env["JHUB_BROKER_S3_PROFILES"].split() == ["default", "other-vo-data"], "the new grant, only it"
    assert "[profile other-vo-data]" in env["JHUB_BROKER_AWS_CONFIG"]

    # taking the rules back applies at the next login too
    await broker(site, "PUT", "auth/rules", {"admin_entitlements": []})
    assert await carol_logs_in()
    assert (await hub_api(site, "GET", "users/carol@egi.eu"))["admin"] is False
    await broker(site, "PUT", "auth/rules", {"allowed_entitlements": []})
    assert not await carol_logs_in()
    assert await bob_logs_in(site), "the configured rules still hold"
    assert open(os.path.join(site.dir, "hub.pid")).read() == pid, "all of it without a hub restart"


async def test_a_switch_that_locks_the_admin_out_is_rolled_back_although_the_hub_answers(site):
    await site.client.wait_for("/services/broker/api/health", timeout=120)
    if site.cgroups:
        hub_pids = set(procs(site.cgroups["hub"]))
        assert len(hub_pids) >= 3, "the hub, its proxy and the broker run in the hub's cgroup"
    assert await bob_logs_in(site), "the bootstrap admin logs in through Check-in"

    # an issuer URL with a typo: the configuration validates, the hub starts and its API answers, but the login
    # (discovery at /hub/oauth_login) fails, so nobody could log in
    typo = f"http://127.0.0.1:{free_port()}/auth/realms/egi"
    status = await switch(site, {"kind": "generic-oidc", "issuer": typo, "client_id": OIDC_ID,
                                 "client_secret": OIDC_SECRET, "oauth_callback_url": site.callback})
    assert status["state"] == "rolled-back", status
    assert "bootstrap admin could not log in" in status["message"] and "HTTP 500" in status["message"], status
    assert not os.path.exists(os.path.join(site.dir, FRAGMENT)), "back to jupyterhub_config.py's method"
    log = open(os.path.join(site.dir, FRAGMENT + ".restart.log")).read()
    if site.cgroups:
        # the helper ran in its own cgroup; both restarts killed the whole hub cgroup, yet it rolled back
        assert f"moved into cgroup {site.cgroups['helper']}" in log
        assert not hub_pids & set(procs(site.cgroups["hub"])), "every process of the old hub was killed"
    assert await bob_logs_in(site), "Check-in is back and the bootstrap admin gets in"
    r = (await site.client.request("GET", "/services/broker/api/auth/method", token=site.token)).json()
    assert r["method"] is None
    audit = (await site.client.request("GET", "/services/broker/api/auth/audit", token=site.token)).json()
    assert any(a["action"] == "auth:restart" and a["result"] == "failed" and "could not log in" in a["detail"]
               for a in audit["actions"])
    assert OIDC_SECRET not in log


async def test_an_oauth_switch_is_checked_against_its_provider(site):
    await site.client.wait_for("/services/broker/api/health", timeout=120)
    form = {"kind": "generic-oidc", "issuer": site.standin.issuer, "username_claim": "sub", "client_id": OIDC_ID,
            "client_secret": OIDC_SECRET, "oauth_callback_url": site.callback}
    status = await switch(site, form)
    assert status["state"] == "ok", status
    assert f"sends users to {site.standin.issuer}" in status["message"], status
    assert f"with client {OIDC_ID}" in status["message"]
    to = await asyncio.to_thread(first_external_redirect, site.url + "/hub/login")
    assert isinstance(to, str) and to.startswith(site.standin.issuer), to
    assert await bob_logs_in(site), "the bootstrap admin logs in with the new method"
    assert os.path.exists(os.path.join(site.dir, FRAGMENT))


async def test_dummy_where_allowed_serves_its_form_despite_auto_login(site):
    """The operator allowed Dummy; the site's auto_login (for Check-in) no longer turns /hub/login into a 500, and
    the bootstrap admin gets in although the Check-in site lets no existing user in by name."""
    await site.client.wait_for("/services/broker/api/health", timeout=120)
    status = await switch(site, {"kind": "dummy", "password": "Shared-Demo-Password-1"})
    assert status["state"] == "ok" and "the login form is served" in status["message"], status
    r = await site.client.request("GET", "/hub/login")
    assert r.status_code == 200 and 'type="password"' in r.text
    assert (await alogin(site.url, "bob@egi.eu", "Shared-Demo-Password-1"))[1], \
        "the bootstrap admin logs in (the site lets nobody in by name but its admins)"
    assert not (await alogin(site.url, "bob@egi.eu", "wrong"))[1]


def test_helper_that_cannot_leave_the_hub_cgroup_changes_nothing(tmp_path):
    """The real helper process, given a cgroup it cannot join: it runs no restart and puts the previous
    configuration back (a restart from inside the hub's cgroup could kill it half-way)."""
    from jhub_broker.services.authadmin import settings
    from jhub_broker.services.db import make_session_factory
    db_url = f"sqlite:///{tmp_path}/broker.sqlite"
    db = make_session_factory(db_url)()
    settings.put(db, "method", {"kind": "dummy", "settings": {}, "secrets": {}}, "admin")
    db.commit()
    fragment, backup, marker = tmp_path / "50-auth.py", tmp_path / "50-auth.py.bak-1", tmp_path / "restarted"
    fragment.write_text("# new\n")
    backup.write_text("# previous\n")
    job = {"command": ["touch", str(marker)], "check_url": "http://127.0.0.1:9/", "timeout": 5,
           "fragment": str(fragment), "backup": str(backup), "previous_method": {"kind": "pam", "settings": {},
                                                                                "secrets": {}},
           "db_url": db_url, "user": "admin", "kind": "dummy", "started": "2026-01-01T00:00:00Z",
           "cgroup": str(tmp_path / "not-a-cgroup" / "x"), "login_url": "", "login": {}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    p = subprocess.run([sys.executable, "-m", "jhub_broker.services.authadmin.restart", str(tmp_path / "job.json")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert not marker.exists(), "no restart was run"
    assert fragment.read_text() == "# previous\n"
    db.expire_all()
    status = settings.get(db, "restart_status")
    assert status["state"] == "failed" and "could not leave the hub's cgroup" in status["message"], status
    assert settings.get(db, "method")["kind"] == "pam"


def test_systemd_run_command_runs_the_helper_as_its_own_unit(monkeypatch):
    """Where systemd is PID 1 (not on this machine: only the command line is checked), the helper becomes a
    transient unit outside the hub's unit, removed when done; no secret goes into the unit's environment (which
    `systemctl show` displays)."""
    from jhub_broker.services.authadmin.apply import systemd_run_command
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "crypt-key-must-not-leak")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "token-must-not-leak")
    monkeypatch.setenv("PYTHONPATH", "/srv/site")
    cmd = systemd_run_command("jhub-broker-restart-1", ["/usr/bin/python3", "-m", "x", "/etc/j/.job"],
                              "/etc/j/50-auth.py.restart.log")
    assert cmd[0] == "systemd-run" and "--unit=jhub-broker-restart-1" in cmd and "--collect" in cmd
    assert ("--user" in cmd) == (os.geteuid() != 0)
    assert "--property=StandardError=append:/etc/j/50-auth.py.restart.log" in cmd
    assert "--setenv=PYTHONPATH=/srv/site" in cmd
    assert cmd[-4:] == ["/usr/bin/python3", "-m", "x", "/etc/j/.job"]
    assert "must-not-leak" not in " ".join(cmd)
