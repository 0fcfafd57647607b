"""``keystone_ec2``: Check-in access token -> Keystone federated token -> EC2 credentials (EGI FedCloud)."""
import json

from tornado.httpclient import AsyncHTTPClient

from .credentials import Credentials


class KeystoneEC2Backend:
    def __init__(self, endpoint, log):
        self.auth_url = endpoint["keystone_url"].rstrip("/")
        self.idp = endpoint.get("identity_provider", "egi.eu")
        self.protocol = endpoint.get("protocol", "openid")
        self.project = endpoint.get("project")
        self.log = log

    async def _post(self, url, body, headers):
        return await AsyncHTTPClient().fetch(url, method="POST", body=json.dumps(body), request_timeout=30,
                                             headers={"Content-Type": "application/json", **headers})

    async def credentials(self, user, auth_state, grants):
        http = AsyncHTTPClient()
        fed = await http.fetch(f"{self.auth_url}/v3/OS-FEDERATION/identity_providers/{self.idp}/protocols/"
                               f"{self.protocol}/auth", method="POST", body="{}", request_timeout=30,
                               headers={"Authorization": f"Bearer {auth_state['access_token']}",
                                        "Content-Type": "application/json"})
        unscoped = fed.headers["X-Subject-Token"]
        scope = {"project": ({"id": self.project["id"]} if "id" in (self.project or {}) else
                             {"name": self.project["name"], "domain": {"id": self.project.get("domain", "default")}})} \
            if self.project else None
        auth = {"auth": {"identity": {"methods": ["token"], "token": {"id": unscoped}}}}
        if scope:
            auth["auth"]["scope"] = scope
        scoped = await self._post(f"{self.auth_url}/v3/auth/tokens", auth, {})
        token = scoped.headers["X-Subject-Token"]
        body = json.loads(scoped.body)["token"]
        uid, pid = body["user"]["id"], (body.get("project") or {}).get("id")
        headers = {"X-Auth-Token": token}
        listing = json.loads((await http.fetch(f"{self.auth_url}/v3/users/{uid}/credentials/OS-EC2",
                                               headers=headers, request_timeout=30)).body)
        existing = [c for c in listing.get("credentials", []) if not pid or c["tenant_id"] == pid]
        if existing:
            cred = existing[0]
        else:
            cred = json.loads((await self._post(f"{self.auth_url}/v3/users/{uid}/credentials/OS-EC2",
                                                {"tenant_id": pid}, headers)).body)["credential"]
        self.log.info("Keystone EC2 credentials ready for %s", user.name)
        return Credentials(cred["access"], cred["secret"])

    def profiles_share_credentials(self):
        return True
