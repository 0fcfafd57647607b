"""Per-user S3 credentials: grants -> backend per endpoint -> cached, renewed credentials; server env."""
import asyncio
import time

from .grants import resolve_grants
from .keystone_ec2 import KeystoneEC2Backend
from .static import StaticBackend
from .sts import STSBackend

BACKENDS = {"static": StaticBackend, "sts": STSBackend, "keystone_ec2": KeystoneEC2Backend}
API_PATH = "/api/jhub-broker/s3-credentials"
# auth_state key: {endpoint: [access key ids]} of credentials a backend made for the user's servers and
# that must be deleted when they stop (keystone_ec2); kept in the (encrypted) auth_state so a hub restart
# does not lose track of them
ISSUED_KEY = "jhub_broker_s3_issued"


class S3Broker:
    def __init__(self, authenticator):
        self.auth = authenticator
        self.log = authenticator.log
        self._cache = {}     # (user, profile) or (user, "@endpoint") -> Credentials
        self._locks = {}
        self._issued = {}    # user -> {endpoint: {access key id}} made by revocable backends, not yet deleted

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
        profiles = self.profiles([g.name for g in user.groups], await user.get_auth_state())
        if profile not in profiles:
            raise KeyError(profile)
        endpoint = profiles[profile][0]
        # profiles of an endpoint whose backend gives one credential for all grants share one cache entry
        # (one STS session, one Keystone EC2 credential per server life)
        key = (user.name, "@" + endpoint) if self.backend(endpoint).profiles_share_credentials() \
            else (user.name, profile)
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
            backend = self.backend(endpoint)
            creds = await backend.credentials(user, auth_state, grants)
            if getattr(backend, "revocable", False):
                await self._record_issued(user, endpoint, creds.access_key_id)
            self._cache[key] = creds
            return creds

    def forget(self, user):
        for key in [k for k in self._cache if k[0] == user.name]:
            del self._cache[key]

    # -- credentials made per server life (keystone_ec2): deleted when the servers stop -----------
    def _state_lock(self, user):
        # the authenticator's per-user refresh lock: auth_state is read, changed and saved under it
        return self.auth._refresh_locks.setdefault(user.name, asyncio.Lock())

    async def _record_issued(self, user, endpoint, access_key_id):
        self._issued.setdefault(user.name, {}).setdefault(endpoint, set()).add(access_key_id)
        async with self._state_lock(user):
            state = await user.get_auth_state()
            if state is None:
                return
            issued = state.setdefault(ISSUED_KEY, {})
            issued[endpoint] = sorted(set(issued.get(endpoint, [])) | {access_key_id})
            await user.save_auth_state(state)

    async def issued(self, user):
        """{endpoint: {access key id}} made for this user's servers and not deleted yet."""
        out = {ep: set(ids) for ep, ids in self._issued.get(user.name, {}).items()}
        state = await user.get_auth_state() or {}
        for ep, ids in (state.get(ISSUED_KEY) or {}).items():
            out.setdefault(ep, set()).update(ids)
        return {ep: ids for ep, ids in out.items() if ids}

    async def revoke(self, user):
        """Delete the credentials made for the user's servers (at stop and user deletion).

        Returns {endpoint: {access key id}} that could not be deleted (login expired, endpoint down);
        they stay recorded and are tried again at the next stop or at the user's deletion.
        """
        issued = await self.issued(user)
        if not issued:
            return {}
        left = {}
        refreshed = await self.auth.refresh_user(user)
        if refreshed is False:
            left = issued
            self.log.warning("Could not delete %d S3 credential(s) of %s: their login expired; "
                             "trying again at the next stop", sum(map(len, issued.values())), user.name)
        else:
            auth_state = await user.get_auth_state()
            for endpoint, ids in issued.items():
                if endpoint not in self.endpoints:
                    left[endpoint] = ids
                    continue
                try:
                    gone = set(await self.backend(endpoint).revoke(user, auth_state, sorted(ids)))
                except Exception as e:  # noqa: BLE001
                    self.log.warning("Could not delete S3 credentials of %s at %s: %s", user.name, endpoint,
                                     type(e).__name__)
                    gone = set()
                if ids - gone:
                    left[endpoint] = ids - gone
        if left:
            self._issued[user.name] = {ep: set(ids) for ep, ids in left.items()}
        else:
            self._issued.pop(user.name, None)
        async with self._state_lock(user):
            state = await user.get_auth_state()
            if state is not None:
                if left:
                    state[ISSUED_KEY] = {ep: sorted(ids) for ep, ids in left.items()}
                else:
                    state.pop(ISSUED_KEY, None)
                await user.save_auth_state(state)
        return left

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
