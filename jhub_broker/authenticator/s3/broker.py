"""Per-user S3 credentials: grants -> backend per endpoint -> cached, renewed credentials; server env."""
import asyncio
import time

from .grants import resolve_grants
from .keystone_ec2 import KeystoneEC2Backend
from .static import StaticBackend
from .sts import STSBackend

BACKENDS = {"static": StaticBackend, "sts": STSBackend, "keystone_ec2": KeystoneEC2Backend}
API_PATH = "/api/jhub-broker/s3-credentials"


class S3Broker:
    def __init__(self, authenticator):
        self.auth = authenticator
        self.log = authenticator.log
        self._cache = {}     # (user, endpoint, profile) -> Credentials
        self._locks = {}

    @property
    def endpoints(self):
        return self.auth.s3_endpoints

    def default_endpoint(self):
        return next(iter(self.endpoints), "")

    def backend(self, name):
        ep = self.endpoints[name]
        return BACKENDS[ep.get("backend", "static")](ep, self.log)

    def grants(self, user_groups, auth_state):
        return resolve_grants(self.auth.s3_grants, set(user_groups), self.auth.entitlements_of(auth_state),
                              self.auth.rules, self.default_endpoint())

    def profiles(self, user_groups, auth_state):
        """profile name -> (endpoint, [grants]). One profile per bucket, plus ``default``."""
        grants = self.grants(user_groups, auth_state)
        out = {}
        for g in grants:
            if self.backend(g.endpoint).profiles_share_credentials():
                same = [x for x in grants if x.endpoint == g.endpoint]
            else:
                same = [x for x in grants if x.endpoint == g.endpoint and x.key == g.key]
            out[g.profile] = (g.endpoint, same)
        if grants:
            out["default"] = out[grants[0].profile]
        return out

    async def credentials(self, user, profile):
        """Credentials for one profile of a user, renewed ahead of expiry; KeyError if not granted."""
        if profile not in self.profiles([g.name for g in user.groups], await user.get_auth_state()):
            raise KeyError(profile)
        key = (user.name, profile)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            if cached and (not cached.expires_at or cached.expires_at - time.time() > self.auth.s3_renew_margin):
                return cached
            # tokens may have expired since login: refresh first (one refresh at a time per user)
            refreshed = await self.auth.refresh_user(user)
            if refreshed is False:
                raise PermissionError("login expired")
            auth_state = await user.get_auth_state()
            endpoint, grants = self.profiles([g.name for g in user.groups], auth_state)[profile]
            creds = await self.backend(endpoint).credentials(user, auth_state, grants)
            self._cache[key] = creds
            return creds

    def forget(self, user):
        for key in [k for k in self._cache if k[0] == user.name]:
            del self._cache[key]

    def aws_config(self, profiles):
        lines = []
        for name, (endpoint, _) in sorted(profiles.items()):
            if name == "default":
                continue
            ep = self.endpoints[endpoint]
            lines += [f"[profile {name}]",
                      f"credential_process = jhub-broker-s3-credentials --profile {name}",
                      f"endpoint_url = {ep['url']}"]
            if ep.get("region"):
                lines.append(f"region = {ep['region']}")
            lines.append("")
        return "\n".join(lines)

    def environment(self, spawner, profiles):
        """Env for the server: default profile via the container-credentials provider, named ones via config."""
        if not profiles:
            return {}
        endpoint, _ = profiles["default"]
        ep = self.endpoints[endpoint]
        api = (self.auth.s3_credentials_api_url or spawner.hub.api_url).rstrip("/")
        env = {
            "AWS_ENDPOINT_URL_S3": ep["url"],
            "AWS_ENDPOINT_URL": ep["url"],
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{api}/jhub-broker/s3-credentials/default",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": lambda sp: f"token {sp.api_token}",
            "JHUB_BROKER_S3_API": f"{api}/jhub-broker/s3-credentials",
            "JHUB_BROKER_AWS_CONFIG": self.aws_config(profiles),
            "JHUB_BROKER_S3_PROFILES": " ".join(sorted(profiles)),
        }
        if ep.get("region"):
            env["AWS_DEFAULT_REGION"] = ep["region"]
        if self.auth.s3_config_file:
            env["AWS_CONFIG_FILE"] = self.auth.s3_config_file
        return env
