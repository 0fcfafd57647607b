"""keystone_ec2: the user's Check-in access token -> Keystone federation -> EC2 credentials, on the local cloud."""
import asyncio

import requests


async def test_keystone_ec2_credentials_for_federated_user(checkin_hub, browser_login, checkin, make_cloud):
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
    session, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200
    user = app.users["alice@egi.eu"]
    token = user.new_api_token()
    api = f"http://127.0.0.1:{app.hub.port}{app.hub.base_url}api/jhub-broker/s3-credentials"

    def get(profile):
        return requests.get(f"{api}/{profile}", headers={"Authorization": f"token {token}"}, timeout=30)
    first = await asyncio.to_thread(get, "default")
    assert first.status_code == 200, first.text
    creds = first.json()
    assert creds["Version"] == 1 and creds["AccessKeyId"] and creds["SecretAccessKey"]
    # Keystone shows exactly this credential for alice's federated shadow user
    access_token = (await user.get_auth_state())["access_token"]

    def keystone_view():
        fed = requests.post(f"{auth_url}/OS-FEDERATION/identity_providers/egi.eu/protocols/openid/auth",
                            headers={"Authorization": f"Bearer {access_token}"}, timeout=30)
        fed.raise_for_status()
        t = fed.headers["X-Subject-Token"]
        uid = fed.json()["token"]["user"]["id"]
        return requests.get(f"{auth_url}/users/{uid}/credentials/OS-EC2", headers={"X-Auth-Token": t},
                            timeout=30).json()["credentials"]
    listed = await asyncio.to_thread(keystone_view)
    assert [c["access"] for c in listed] == [creds["AccessKeyId"]]
    # after stop + restart the same EC2 credential is reused, not piled up
    await app.authenticator.post_spawn_stop(user, user.spawner)
    again = (await asyncio.to_thread(get, "ref-data")).json()
    assert again["AccessKeyId"] == creds["AccessKeyId"]
    assert len(await asyncio.to_thread(keystone_view)) == 1
    # a profile without a grant is refused
    assert (await asyncio.to_thread(get, "other-vo")).status_code == 404
