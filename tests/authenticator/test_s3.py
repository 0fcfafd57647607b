"""S3 grants reach a real S3 server (moto, auth enforced) through the credentials the hub hands out."""
import asyncio
import json
import os
import secrets as _secrets
import sys
import textwrap
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml

from jhub_broker.authenticator.s3.grants import resolve_grants
from jhub_broker.authenticator.s3.policy import granted_set, policy_for
from jhub_broker.authenticator.s3.scope import OWN_S3_SCOPE, S3_SCOPE
from jhub_broker.authenticator.s3.sts import STSBackend
from jhub_broker.authenticator.entitlements import parse_entitlements
from jhub_broker.authenticator.rules import AccessRules
from jhub_broker.emulators.s3 import MotoS3

BUCKETS = ["ref-data", "analysis-private", "ifremer-private", "other-vo"]
GRANTS = [
    {"bucket": "ref-data", "level": "read", "groups": ["vo.example.eu"]},
    {"bucket": "analysis-private", "level": "write", "groups": ["vo.example.eu:analysis"]},
    {"bucket": "ifremer-private", "level": "write", "groups": ["vo.example.eu:ifremer"]},
    {"bucket": "other-vo", "level": "admin", "entitlements": ["vo.other.eu:role=manager"]},
]


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    m = MotoS3(str(tmp_path_factory.mktemp("moto"))).start()
    try:
        _setup_static(m, tmp_path_factory)
    except BaseException:
        m.stop()
        raise
    yield m
    m.stop()


def _setup_static(m, tmp_path_factory):
    rules = AccessRules()
    # the operator's per-group IAM users: exactly the grant each group gives
    users = {}
    for g in GRANTS[:3]:
        grants = resolve_grants([g], set(g["groups"]), (), rules, "s3")
        users["grp-" + g["groups"][0].replace(":", "-")] = policy_for(grants)
    keys = m.setup(BUCKETS, users, roles={"jupyterhub-users": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}})
    m.enforce_auth()
    secrets = {"keys": {g["groups"][0]: keys["grp-" + g["groups"][0].replace(":", "-")] for g in GRANTS[:3]}}
    path = tmp_path_factory.mktemp("secrets") / "s3-keys.yaml"
    path.write_text(yaml.safe_dump(secrets))
    m.secrets_file = str(path)


@pytest.fixture(scope="module")
def moto_open(tmp_path_factory):
    """moto without auth: with auth on it demands SigV4 even on AssumeRoleWithWebIdentity (real STS does not)."""
    m = MotoS3(str(tmp_path_factory.mktemp("moto-open"))).start()
    m.setup(BUCKETS, {}, roles={"jupyterhub-users": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}})
    yield m
    m.stop()


@pytest.fixture
def helper_bin(tmp_path):
    """`jhub-broker-s3-credentials` on PATH, as the console script would be."""
    d = tmp_path / "bin"
    d.mkdir()
    p = d / "jhub-broker-s3-credentials"
    p.write_text(f"#!/bin/sh\nexec {sys.executable} -m jhub_broker.authenticator.s3.cli \"$@\"\n")
    p.chmod(0o755)
    return str(d)


PROBE = textwrap.dedent("""
    import json, sys, boto3, botocore.exceptions
    out = {}
    for profile, bucket in json.loads(sys.argv[1]):
        s3 = boto3.Session(profile_name=None if profile == "default" else profile).client("s3")
        r = {}
        try:
            s3.get_object(Bucket=bucket, Key="README.txt")["Body"].read(); r["read"] = True
        except botocore.exceptions.ClientError as e:
            r["read"] = e.response["Error"]["Code"]
        try:
            s3.put_object(Bucket=bucket, Key="probe.txt", Body=b"x"); r["write"] = True
        except botocore.exceptions.ClientError as e:
            r["write"] = e.response["Error"]["Code"]
        out[f"{profile}:{bucket}"] = r
    print(json.dumps(out))
""")


def server_token(user):
    """A token with the scopes the hub's `server` role gives a server (the !server filter left out: only the
    hub's spawn resolves it)."""
    return user.new_api_token(note="server", scopes=["users:activity!user", OWN_S3_SCOPE])


async def server_env(app, user, tmp_path, helper_bin):
    """Exactly the env a spawner would hand the server (plus the config file its start hook writes)."""
    spawner = user.spawner
    spawner.api_token = server_token(user)
    await app.authenticator.pre_spawn_start(user, spawner)
    env = {k: (v(spawner) if callable(v) else v) for k, v in spawner.environment.items()}
    env.update(JUPYTERHUB_API_TOKEN=spawner.api_token, AWS_CONFIG_FILE=str(tmp_path / "aws" / "config"),
               PATH=helper_bin + os.pathsep + os.environ["PATH"], HOME=str(tmp_path),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "jhub_broker.authenticator.s3.cli",
                                             "--write-config", env=env)
    assert await p.wait() == 0
    return env


async def probe(env, pairs):
    p = await asyncio.create_subprocess_exec(sys.executable, "-c", PROBE, json.dumps(pairs), env=env,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await p.communicate()
    assert p.returncode == 0, err.decode()[-2000:]
    return json.loads(out)


async def test_static_backend_user_reaches_exactly_granted_buckets(checkin_hub, browser_login, moto, tmp_path,
                                                                   helper_bin, caplog):
    app = await checkin_hub(s3_endpoints={"s3": {"url": moto.url, "backend": "static", "region": "us-east-1",
                                                 "secrets_file": moto.secrets_file}},
                            s3_grants=GRANTS)
    _, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200
    user = app.users["alice@egi.eu"]
    env = await server_env(app, user, tmp_path, helper_bin)
    assert env["AWS_ENDPOINT_URL_S3"] == moto.url
    assert set(env["JHUB_BROKER_S3_PROFILES"].split()) == {"default", "ref-data", "analysis-private"}
    assert "SecretAccessKey" not in env["JHUB_BROKER_AWS_CONFIG"]
    res = await probe(env, [["ref-data", "ref-data"], ["analysis-private", "analysis-private"],
                            ["analysis-private", "ifremer-private"], ["ref-data", "other-vo"],
                            ["default", "analysis-private"]])
    assert res["ref-data:ref-data"] == {"read": True, "write": "AccessDenied"}
    assert res["analysis-private:analysis-private"] == {"read": True, "write": True}
    assert res["analysis-private:ifremer-private"] == {"read": "AccessDenied", "write": "AccessDenied"}
    assert res["ref-data:other-vo"] == {"read": "AccessDenied", "write": "AccessDenied"}
    assert res["default:analysis-private"]["read"] is True   # container-credentials path via the hub API

    # another user's token cannot get alice's credentials: bob has no analysis-private grant
    bob_session, r = await browser_login("bob", "bob-pw")
    bob = app.users["bob@egi.eu"]
    token = server_token(bob)
    resp = await asyncio.to_thread(
        bob_session.get, f"{env['JHUB_BROKER_S3_API']}/analysis-private",
        headers={"Authorization": f"token {token}"})
    assert resp.status_code == 404

    # stop: credentials forgotten, env removed
    await app.authenticator.post_spawn_stop(user, user.spawner)
    assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" not in user.spawner.environment
    assert not [k for k in app.authenticator.s3_broker._cache if k[0] == user.name]

    # nothing secret reached the hub's log
    secrets = [k["secret_access_key"] for k in yaml.safe_load(open(moto.secrets_file))["keys"].values()]
    state = await user.get_auth_state()
    secrets += [state["access_token"], state["refresh_token"], state["id_token"], env["JUPYTERHUB_API_TOKEN"]]
    assert caplog.text and not [s for s in secrets if s in caplog.text]


def _oauth_token_for_service(session, hub, client_id, secret, redirect_uri):
    """What a service gets when the user logs in to it: the hub's real OAuth code flow in the user's browser."""
    r = session.get(f"{hub}/hub/api/oauth2/authorize", allow_redirects=False, timeout=30,
                    params={"client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code",
                            "state": "s"})
    assert r.status_code == 302, r.text[:500]
    code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
    r = requests.post(f"{hub}/hub/api/oauth2/token", timeout=30,
                      data={"client_id": client_id, "client_secret": secret, "grant_type": "authorization_code",
                            "code": code, "redirect_uri": redirect_uri})
    assert r.status_code == 200, r.text[:500]
    return r.json()["access_token"]


async def test_credentials_route_answers_only_tokens_with_the_s3_scope_of_their_owner(
        checkin_hub, browser_login, moto, hub_port):
    """Item 4 of issue 11: before, any token of the user (no scopes, a service's OAuth token) got the keys."""
    svc_secret = "notes-" + _secrets.token_hex(16)
    redirect = f"http://127.0.0.1:{hub_port}/services/notes/oauth_callback"
    app = await checkin_hub(
        services=[{"name": "notes", "api_token": svc_secret, "oauth_client_id": "service-notes",
                   "oauth_redirect_uri": redirect, "oauth_no_confirm": True}],
        s3_endpoints={"s3": {"url": moto.url, "backend": "static", "region": "us-east-1",
                             "secrets_file": moto.secrets_file}},
        s3_grants=GRANTS)
    alice_browser, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200
    alice = app.users["alice@egi.eu"]
    api = f"http://127.0.0.1:{app.hub.port}{app.hub.base_url}api/jhub-broker/s3-credentials"
    keys = yaml.safe_load(open(moto.secrets_file))["keys"]

    def get(token, profile="analysis-private"):
        return requests.get(f"{api}/{profile}", headers={"Authorization": f"token {token}"}, timeout=30)

    # a token of alice's made with no scopes, or with other scopes: refused, and told what is missing
    for scopes in ([], ["read:users!user", "users:activity!user"]):
        r = await asyncio.to_thread(get, alice.new_api_token(scopes=scopes, note="not a server"))
        assert r.status_code == 403, (scopes, r.text)
        assert S3_SCOPE in r.json()["message"]
        assert "SecretAccessKey" not in r.text
    # the token the hub gives the service "notes" when alice logs in to it, and the service's own token
    oauth = await asyncio.to_thread(_oauth_token_for_service, alice_browser, f"http://127.0.0.1:{hub_port}",
                                    "service-notes", svc_secret, redirect)
    for token in (oauth, svc_secret):
        r = await asyncio.to_thread(get, token)
        assert r.status_code == 403, r.text
        assert "SecretAccessKey" not in r.text
    # a token with the scopes of alice's server: alice's own credentials for that grant
    r = await asyncio.to_thread(get, server_token(alice))
    assert r.status_code == 200, r.text
    assert r.json()["AccessKeyId"] == keys["vo.example.eu:analysis"]["access_key_id"]
    # bob's server token holds the scope for bob only: it gets nothing of alice's (no such grant for bob) ...
    await browser_login("bob", "bob-pw")
    bob_token = server_token(app.users["bob@egi.eu"])
    assert (await asyncio.to_thread(get, bob_token)).status_code == 404
    # ... and its default profile is bob's own grant (ref-data through vo.example.eu)
    r = await asyncio.to_thread(get, bob_token, "default")
    assert r.status_code == 200 and r.json()["AccessKeyId"] == keys["vo.example.eu"]["access_key_id"]


def test_sts_session_policy_is_exactly_the_granted_set():
    rules = AccessRules()
    ents = parse_entitlements(["urn:mace:egi.eu:group:vo.other.eu:role=manager#aai.egi.eu"])
    grants = resolve_grants(GRANTS, {"vo.example.eu", "vo.example.eu:analysis"}, ents, rules, "s3")
    assert {(g.bucket, g.level) for g in grants} == {("ref-data", "read"), ("analysis-private", "write"),
                                                    ("other-vo", "admin")}
    backend = STSBackend({"url": "http://127.0.0.1:1"}, log=None)

    class U:
        name = "alice"
    params = backend.request_params(U, {"id_token": "tok"}, grants)
    sent = json.loads(params["Policy"])
    assert granted_set(sent) == {("ref-data", "read"), ("analysis-private", "write"), ("other-vo", "admin")}
    for st in sent["Statement"]:
        assert all(r.startswith("arn:aws:s3:::") for r in st["Resource"])
        assert "s3:*" not in st["Action"] or st["Resource"][0] == "arn:aws:s3:::other-vo"
    assert len(params["Policy"]) <= 2048, "AWS packs session policies into 2048 chars"


LONG_PROBE = textwrap.dedent("""
    import json, sys, time, boto3
    s3 = boto3.client("s3")          # one client for the whole life of the "server"
    keys = []
    for i in range(3):
        s3.get_object(Bucket="ref-data", Key="README.txt")["Body"].read()
        keys.append(s3._request_signer._credentials.get_frozen_credentials().access_key)
        time.sleep(3)
    print(json.dumps(keys))
""")


async def test_sts_short_lived_credentials_renew_while_server_runs(checkin_hub, browser_login, moto_open,
                                                                   tmp_path, helper_bin):
    app = await checkin_hub(s3_endpoints={"s3": {"url": moto_open.url, "backend": "sts", "region": "us-east-1",
                                                 "role_arn": "arn:aws:iam::123456789012:role/jupyterhub-users",
                                                 "duration_seconds": 2}},
                            s3_grants=GRANTS, s3_renew_margin=0.5)
    _, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200
    user = app.users["alice@egi.eu"]
    env = await server_env(app, user, tmp_path, helper_bin)
    p = await asyncio.create_subprocess_exec(sys.executable, "-c", LONG_PROBE, env=env,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await p.communicate()
    assert p.returncode == 0, err.decode()[-2000:]
    keys = json.loads(out)
    # each read after the 2 s credential expired used a freshly issued one, and kept working
    assert len(set(keys)) == 3, keys
    # the credential_process path (named profiles) also renews
    got = []
    for _ in range(2):
        q = await asyncio.create_subprocess_exec("jhub-broker-s3-credentials", "--profile", "ref-data", env=env,
                                                 stdout=asyncio.subprocess.PIPE)
        got.append(json.loads((await q.communicate())[0]))
        await asyncio.sleep(2.5)
    assert got[0]["AccessKeyId"] != got[1]["AccessKeyId"]
    assert got[1]["Expiration"] > got[0]["Expiration"] and got[0]["SessionToken"]


SERVER_WRAPPER = textwrap.dedent("""
    # the spawned server's process: run the documented start hook, probe S3 from inside, then serve
    import json, os, runpy, subprocess, sys
    subprocess.run([sys.executable, "-m", "jhub_broker.authenticator.s3.cli", "--write-config"], check=True)
    pairs = [["ref-data", "ref-data"], ["analysis-private", "analysis-private"],
             ["analysis-private", "ifremer-private"], ["default", "other-vo"]]
    p = subprocess.run([sys.executable, "-c", os.environ["PROBE_CODE"], json.dumps(pairs)],
                       capture_output=True, text=True)
    with open(os.environ["PROBE_OUT"], "w") as f:
        f.write(p.stdout if p.returncode == 0 else json.dumps({"error": p.stderr[-2000:]}))
    sys.argv = [sys.argv[0]]
    runpy.run_module("jupyterhub.tests.mocksu", run_name="__main__")
""")


async def test_spawned_server_process_reaches_exactly_granted_buckets(checkin_hub, browser_login, moto, tmp_path,
                                                                      helper_bin):
    """Spawned through the hub's REST API; the probe runs inside the server process with the env it got."""
    wrapper = tmp_path / "server.py"
    wrapper.write_text(SERVER_WRAPPER)
    out = tmp_path / "probe.json"
    app = await checkin_hub(s3_endpoints={"s3": {"url": moto.url, "backend": "static", "region": "us-east-1",
                                                 "secrets_file": moto.secrets_file}},
                            s3_grants=GRANTS, s3_config_file=str(tmp_path / "home" / ".aws" / "config"))
    _, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200
    user = app.users["alice@egi.eu"]
    user.spawner.cmd = [sys.executable, str(wrapper)]
    user.spawner.environment = {"PATH": helper_bin + os.pathsep + os.environ["PATH"], "PROBE_OUT": str(out),
                                "PROBE_CODE": PROBE, "HOME": str(tmp_path / "home"),
                                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                                "AWS_EC2_METADATA_DISABLED": "true"}
    token = user.new_api_token()
    api = f"http://127.0.0.1:{app.hub.port}{app.hub.base_url}api/users/alice@egi.eu"

    def spawn_and_wait():
        import time
        import requests
        h = {"Authorization": f"token {token}"}
        resp = requests.post(api + "/server", headers=h, timeout=60)
        assert resp.status_code in (201, 202), resp.text
        for _ in range(120):
            model = requests.get(api, headers=h, timeout=30).json()
            if (model.get("servers") or {}).get("", {}).get("ready"):
                return model
            time.sleep(0.5)
        raise AssertionError("server did not become ready")
    await asyncio.to_thread(spawn_and_wait)
    # the token the hub made for the server carries the S3 scope for alice only
    from jupyterhub import orm
    from jupyterhub.scopes import get_scopes_for
    held = get_scopes_for(orm.APIToken.find(app.db, user.spawner.api_token))
    assert f"{S3_SCOPE}!user=alice@egi.eu" in held, held
    res = json.loads(out.read_text())
    assert "error" not in res, res.get("error")
    assert res["ref-data:ref-data"] == {"read": True, "write": "AccessDenied"}
    assert res["analysis-private:analysis-private"] == {"read": True, "write": True}
    assert res["analysis-private:ifremer-private"] == {"read": "AccessDenied", "write": "AccessDenied"}
    assert res["default:other-vo"] == {"read": "AccessDenied", "write": "AccessDenied"}
    await user.stop()
    assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" not in user.spawner.environment


def test_configure_declares_the_s3_scope_for_users_and_their_servers(tmp_path):
    """configure() declares custom:s3-credentials; users hold it for themselves (beside the broker's scopes on
    the `user` role) and the `server` role gives it to servers' tokens."""
    from traitlets.config import Config
    from jhub_broker import configure
    c = configure(Config(), environments_root=str(tmp_path), admin_users=["admin"])
    jh = c.JupyterHub
    assert S3_SCOPE in jh.custom_scopes and jh.custom_scopes[S3_SCOPE]["description"]
    roles = {r["name"]: r for r in jh.load_roles}
    assert OWN_S3_SCOPE in roles["user"]["scopes"] and "self" in roles["user"]["scopes"]
    assert "custom:broker-environments:view" in roles["user"]["scopes"]
    assert set(roles["server"]["scopes"]) == {"users:activity!user", "access:servers!server", OWN_S3_SCOPE}
    # without the broker no `user` role is loaded: the scope goes to extra_user_scopes instead
    c = configure(Config(), broker=False)
    assert OWN_S3_SCOPE in c.JupyterHub.extra_user_scopes
    assert "user" not in {r["name"] for r in c.JupyterHub.load_roles}
