"""``sts``: AssumeRoleWithWebIdentity with the user's Check-in token and a session policy of the grants."""

import uuid
import xml.etree.ElementTree as ET
from datetime import datetime
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient

from .credentials import Credentials
from .policy import compact, policy_for


class STSBackend:
    def __init__(self, endpoint, log):
        self.url = endpoint.get("sts_url") or endpoint["url"]
        self.role_arn = endpoint.get("role_arn", "arn:aws:iam::000000000000:role/jupyterhub-users")
        self.duration = int(endpoint.get("duration_seconds", 3600))
        self.token_kind = endpoint.get("token", "id_token")
        self.log = log

    def request_params(self, user, auth_state, grants):
        return {
            "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
            "RoleArn": self.role_arn, "RoleSessionName": f"jhub-{uuid.uuid4().hex[:16]}",
            "WebIdentityToken": auth_state[self.token_kind],
            "DurationSeconds": str(self.duration),
            "Policy": compact(policy_for(grants)),
        }

    async def credentials(self, user, auth_state, grants):
        body = urlencode(self.request_params(user, auth_state, grants))
        resp = await AsyncHTTPClient().fetch(self.url, method="POST", body=body, request_timeout=30,
                                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        root = ET.fromstring(resp.body)
        c = next(el for el in root.iter() if el.tag.endswith("Credentials"))
        get = {el.tag.split("}")[-1]: el.text for el in c}
        exp = datetime.fromisoformat(get["Expiration"].replace("Z", "+00:00")).timestamp()
        self.log.info("STS credentials issued for %s until %s", user.name, get["Expiration"])
        return Credentials(get["AccessKeyId"], get["SecretAccessKey"], get.get("SessionToken", ""), exp)

    def profiles_share_credentials(self):
        return True



