"""``keystone_ec2``: Check-in access token -> Keystone federated token -> EC2 credentials (EGI FedCloud)."""
import json

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from .credentials import Credentials


class KeystoneEC2Backend:
    # a credential is made per server life and deleted when the user's servers stop (or the user is deleted)
    revocable = True

    def __init__(self, endpoint, log):
        self.auth_url = endpoint["keystone_url"].rstrip("/")
        self.idp = endpoint.get("identity_provider", "egi.eu")
        self.protocol = endpoint.get("protocol", "openid")
        self.project = endpoint.get("project")
        self.log = log

    async def _post(self, url, body, headers):
        return await AsyncHTTPClient().fetch(url, method="POST", body=json.dumps(body), request_timeout=30,
                                             headers={"Content-Type": "application/json", **headers})

    async def _session(self, auth_state):
        """Project-scoped Keystone token for the user's federated identity: (headers, user id, project id)."""
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
        body = json.loads(scoped.body)["token"]
        return {"X-Auth-Token": scoped.headers["X-Subject-Token"]}, body["user"]["id"], \
            (body.get("project") or {}).get("id")

    async def credentials(self, user, auth_state, grants):
        """A new EC2 credential for this server life (the broker records it; `revoke` deletes it at stop).

        Credentials the user made themselves (CLI, Horizon) are never reused or touched.
        """
        headers, uid, pid = await self._session(auth_state)
        cred = json.loads((await self._post(f"{self.auth_url}/v3/users/{uid}/credentials/OS-EC2",
                                            {"tenant_id": pid}, headers)).body)["credential"]
        self.log.info("Keystone EC2 credential created for %s", user.name)
        return Credentials(cred["access"], cred["secret"])

    async def revoke(self, user, auth_state, access_key_ids):
        """Delete EC2 credentials made by `credentials`; returns those now gone (deleted or already absent)."""
        headers, uid, _ = await self._session(auth_state)
        gone = []
        for access in access_key_ids:
            try:
                await AsyncHTTPClient().fetch(f"{self.auth_url}/v3/users/{uid}/credentials/OS-EC2/{access}",
                                              method="DELETE", headers=headers, request_timeout=30)
            except HTTPClientError as e:
                if e.code != 404:
                    self.log.warning("Keystone refused to delete an EC2 credential of %s (%s)", user.name, e.code)
                    continue
            gone.append(access)
        self.log.info("Deleted %d Keystone EC2 credential(s) of %s", len(gone), user.name)
        return gone

    def profiles_share_credentials(self):
        return True
