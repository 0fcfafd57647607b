"""keystone_ec2: the user's Check-in access token -> Keystone federation -> EC2 credentials, on the local cloud.

A credential is made per server life, deleted when the user's server stops and when the user is deleted;
EC2 credentials the user made themselves are never touched.
"""
import asyncio

import requests

from jhub_broker.authenticator.s3.broker import ISSUED_KEY


async def test_keystone_ec2_credentials_made_per_server_and_deleted_on_stop_and_user_deletion(
        checkin_hub, browser_login, checkin, make_cloud):
    cloud = await asyncio.to_thread(make_cloud, {"federation": {
        "identity_providers": ["egi.eu"], "protocol": "openid",
        "userinfo_url": checkin.discovery["userinfo_endpoint"]}})
    auth_url = cloud.clouds["local"]["auth"]["auth_url"].rstrip("/")
    if not auth_url.endswith("/v3"):
        auth_url += "/v3"
    keystone = auth_url[:-len("/v3")]
    app = await checkin_hub(s3_endpoints={"swift-s3": {
        "url": "http://127.0.0.1:1", "backend": "keystone_ec2", "keystone_url": keystone,
        "identity_provider": "egi.eu", "project": {"name": "research"}}},
        s3_grants=[{"bucket": "ref-data", "level": "read", "groups": ["vo.example.eu"]}])
    _, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200
    user = app.users["alice@egi.eu"]
    hub_api = f"http://127.0.0.1:{app.hub.port}{app.hub.base_url}api"
    alice_token = user.new_api_token(note="alice's browser")

    def call(method, path, token=alice_token, **kw):
        return requests.request(method, f"{hub_api}/{path}", headers={"Authorization": f"token {token}"},
                                timeout=60, **kw)

    async def start_server():
        r = await asyncio.to_thread(call, "POST", "users/alice@egi.eu/server")
        assert r.status_code in (201, 202), r.text
        for _ in range(240):
            model = (await asyncio.to_thread(call, "GET", "users/alice@egi.eu")).json()
            if (model.get("servers") or {}).get("", {}).get("ready"):
                return user.spawner.api_token   # what the server has as JUPYTERHUB_API_TOKEN
            await asyncio.sleep(0.25)
        raise AssertionError("alice's server did not become ready")

    async def stop_server():
        r = await asyncio.to_thread(call, "DELETE", "users/alice@egi.eu/server")
        assert r.status_code in (202, 204), r.text
        for _ in range(240):
            model = (await asyncio.to_thread(call, "GET", "users/alice@egi.eu")).json()
            if "" not in (model.get("servers") or {}):
                return
            await asyncio.sleep(0.25)
        raise AssertionError("alice's server did not stop")

    def fetch(server_token, profile):
        return call("GET", f"jhub-broker/s3-credentials/{profile}", token=server_token)

    shadow = {}

    async def keystone(method="GET"):
        """Alice's EC2 credentials as Keystone lists them, through her own federated token."""
        access_token = (await user.get_auth_state())["access_token"]

        def go():
            fed = requests.post(f"{auth_url}/OS-FEDERATION/identity_providers/egi.eu/protocols/openid/auth",
                                headers={"Authorization": f"Bearer {access_token}"}, timeout=30)
            fed.raise_for_status()
            t = fed.headers["X-Subject-Token"]
            uid = shadow["id"] = fed.json()["token"]["user"]["id"]
            base = f"{auth_url}/users/{uid}/credentials/OS-EC2"
            if method == "POST":   # `openstack ec2 credentials create`, done by alice herself
                r = requests.post(base, json={}, headers={"X-Auth-Token": t}, timeout=30)
                r.raise_for_status()
                return r.json()["credential"]["access"]
            return sorted(c["access"] for c in requests.get(base, headers={"X-Auth-Token": t},
                                                            timeout=30).json()["credentials"])
        return await asyncio.to_thread(go)

    own = await keystone("POST")   # alice's own credential: never reused, never deleted by the hub

    # first server: one new credential, shared by every profile of the endpoint
    server_token = await start_server()
    first = await asyncio.to_thread(fetch, server_token, "default")
    assert first.status_code == 200, first.text
    creds = first.json()
    assert creds["Version"] == 1 and creds["AccessKeyId"] and creds["SecretAccessKey"]
    assert creds["AccessKeyId"] != own
    same = (await asyncio.to_thread(fetch, server_token, "ref-data")).json()
    assert same["AccessKeyId"] == creds["AccessKeyId"]
    assert await keystone() == sorted([own, creds["AccessKeyId"]])
    # recorded in the (encrypted) auth_state, so a hub restart does not lose track of it, also across a new login
    assert (await user.get_auth_state())[ISSUED_KEY] == {"swift-s3": [creds["AccessKeyId"]]}
    _, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200
    assert (await user.get_auth_state())[ISSUED_KEY] == {"swift-s3": [creds["AccessKeyId"]]}
    # a profile without a grant is refused
    assert (await asyncio.to_thread(fetch, server_token, "other-vo")).status_code == 404

    # stop: the credential is deleted in Keystone (alice's own stays), and the record is gone
    await stop_server()
    assert await keystone() == [own]
    assert ISSUED_KEY not in await user.get_auth_state()
    assert (await asyncio.to_thread(fetch, server_token, "default")).status_code == 403   # server token revoked

    # second server: a new credential, not the deleted one
    server_token = await start_server()
    second = (await asyncio.to_thread(fetch, server_token, "default")).json()
    assert second["AccessKeyId"] not in (creds["AccessKeyId"], own)
    assert await keystone() == sorted([own, second["AccessKeyId"]])

    # the hub forgets its in-memory record (as after a restart); Keystone fails the delete at this stop:
    # the credential stays recorded in the auth_state, for the next stop or the user's deletion
    app.authenticator.s3_broker._issued.clear()
    await asyncio.to_thread(cloud.admin, "POST", "/_emulator/faults",
                            {"path": "/credentials/OS-EC2/[0-9a-f]+", "method": "DELETE", "status": 503, "count": 1})
    await stop_server()
    assert await keystone() == sorted([own, second["AccessKeyId"]])
    assert (await user.get_auth_state())[ISSUED_KEY] == {"swift-s3": [second["AccessKeyId"]]}
    assert (await asyncio.to_thread(cloud.admin, "GET", "/_emulator/faults"))["fired"] == 1

    # deleting the user deletes what is left (alice's own credential stays)
    _, r = await browser_login("bob", "bob-pw")   # bob is an admin (vo.example.eu manager)
    assert r.status_code == 200
    bob_token = app.users["bob@egi.eu"].new_api_token(note="admin")
    r = await asyncio.to_thread(call, "DELETE", "users/alice@egi.eu", token=bob_token)
    assert r.status_code == 204, r.text
    assert "alice@egi.eu" not in [u.name for u in app.users.values()]

    def remaining():   # as the cloud's admin sees alice's federated user
        t = cloud.connect("local-admin").auth_token
        return sorted(c["access"] for c in requests.get(f"{auth_url}/users/{shadow['id']}/credentials/OS-EC2",
                                                        headers={"X-Auth-Token": t}, timeout=30).json()["credentials"])
    assert await asyncio.to_thread(remaining) == [own]
