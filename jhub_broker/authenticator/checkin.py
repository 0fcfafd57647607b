"""CheckinAuthenticator: EGI Check-in (or any OIDC issuer) on oauthenticator's GenericOAuthenticator."""
import asyncio
from inspect import isawaitable
import os
import time

import jinja2
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthLoginHandler
from traitlets import Bool, Dict, Enum, Float, List, Unicode, default

from .entitlements import parse_entitlements
from .oidc import OIDCIssuer
from .rules import DEFAULT_HIERARCHY, AccessRules

CHECKIN_ISSUERS = {
    "production": "https://aai.egi.eu/auth/realms/egi",
    "demo": "https://aai-demo.egi.eu/auth/realms/egi",
    "development": "https://aai-dev.egi.eu/auth/realms/egi",
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
    autoescape=True)


class CheckinLoginHandler(OAuthLoginHandler):
    async def get(self):
        await self.authenticator.discover()
        return super().get()


class CheckinCallbackHandler(OAuthCallbackHandler):
    async def get(self):
        self.check_arguments()
        await self.authenticator.discover()
        user = await self.login_user()
        if user is None:
            self.set_status(403)
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(self.authenticator.render_refusal())
            return
        self.redirect(self.get_next_url(user))


class CheckinAuthenticator(GenericOAuthenticator):
    """Log in with EGI Check-in; rights and groups come from ``eduperson_entitlement``."""

    login_handler = CheckinLoginHandler
    callback_handler = CheckinCallbackHandler

    checkin_env = Enum(list(CHECKIN_ISSUERS), default_value="production", config=True,
                       help="Check-in instance: production, demo or development (sets `issuer`).")
    issuer = Unicode(config=True, help="OIDC issuer URL; overrides `checkin_env`. Discovery fills the "
                                       "authorize, token and userinfo URLs.")

    @default("issuer")
    def _issuer_default(self):
        return CHECKIN_ISSUERS[self.checkin_env]

    entitlement_claim = Unicode("eduperson_entitlement", config=True,
                                help="Userinfo claim holding the entitlements.")
    allowed_entitlements = List(Unicode(), config=True,
                                help="Patterns `<group-glob>[:role=<role>]` (e.g. `vo.example.eu`, "
                                     "`vo.example.eu:analysis:role=manager`); a match allows login.")
    admin_entitlements = List(Unicode(), config=True, help="Patterns whose match makes a user admin.")
    group_roles = List(Unicode(), default_value=["member"], config=True,
                       help="Roles (or roles implying them) that make an entitlement a JupyterHub group.")
    role_hierarchy = Dict(default_value=DEFAULT_HIERARCHY, config=True,
                          help="Role -> roles it implies, e.g. {'manager': ['member']}.")
    entitlement_namespace = Unicode("urn:mace:egi.eu", config=True,
                                    help="Only entitlements in this namespace count.")
    trusted_authorities = List(Unicode(), default_value=["aai.egi.eu", "aai-demo.egi.eu", "aai-dev.egi.eu"],
                               config=True, help="Only entitlements issued by these authorities (`#...`) "
                                                 "count; empty trusts any.")
    group_name_format = Unicode("{vo}", config=True, help="JupyterHub group name for a VO.")
    subgroup_name_format = Unicode("{vo}:{subgroups}", config=True,
                                   help="JupyterHub group name for a sub-group ({subgroups} is `a:b`).")
    enrolment_url = Unicode("", config=True, help="Where a refused user can request VO membership.")
    refusal_message = Unicode("", config=True, help="Extra text on the refusal page.")
    refresh_margin = Float(300, config=True,
                           help="Refresh tokens this many seconds before they expire.")
    s3_endpoints = Dict(config=True, help="""S3 endpoints by name: {"url": ..., "backend":
        "static"|"sts"|"keystone_ec2", "region": ..., plus backend options: static `secrets_file`;
        sts `sts_url`, `role_arn`, `duration_seconds`, `token` (id_token|access_token); keystone_ec2
        `keystone_url`, `identity_provider`, `protocol`, `project` ({"name"|"id"})}. The first is the default.""")
    s3_grants = List(Dict(), config=True, help="""Grants: {"bucket": ..., "level": "read"|"write"|"admin",
        "groups": [group globs] and/or "entitlements": [patterns], "endpoint": name, "key": static key name}.""")
    s3_renew_margin = Float(300, config=True, help="Renew temporary S3 credentials this many seconds before expiry.")
    s3_credentials_api_url = Unicode("", config=True,
                                     help="Hub API URL as seen from user servers (default: the hub's api_url).")
    s3_config_file = Unicode("", config=True, help="Path for AWS_CONFIG_FILE in the server; the file is "
                             "written by `jhub-broker-s3-credentials --write-config` at server start.")
    verify_id_token = Bool(True, config=True, help="Verify id_token signatures against the issuer's JWKS.")

    @default("scope")
    def _scope_default(self):
        return ["openid", "profile", "email", "eduperson_entitlement", "offline_access"]

    @default("enable_pkce")
    def _pkce_default(self):
        return True

    @default("manage_groups")
    def _manage_groups_default(self):
        return True

    @default("enable_auth_state")
    def _auth_state_default(self):
        return True

    @default("username_claim")
    def _username_claim_default(self):
        return "sub"

    @default("login_service")
    def _login_service_default(self):
        return "EGI Check-in"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._oidc = None
        self._refresh_locks = {}

    @property
    def s3_broker(self):
        if getattr(self, "_s3_broker", None) is None:
            from .s3 import S3Broker
            self._s3_broker = S3Broker(self)
        return self._s3_broker

    def get_handlers(self, app):
        from .s3 import API_PATH
        from .s3.handler import S3CredentialsHandler
        return super().get_handlers(app) + [(API_PATH + r"/([^/]+)", S3CredentialsHandler)]

    async def pre_spawn_start(self, user, spawner):
        """Hand the server its S3 endpoint, profiles and the way to fetch renewed credentials."""
        r = super().pre_spawn_start(user, spawner)
        if isawaitable(r):
            await r
        if not self.s3_endpoints:
            return
        auth_state = await user.get_auth_state()
        profiles = self.s3_broker.profiles([g.name for g in user.groups], auth_state)
        env = self.s3_broker.environment(spawner, profiles)
        spawner.environment = {**spawner.environment, **env}
        spawner._jhub_broker_s3_env = list(env)

    async def post_spawn_stop(self, user, spawner):
        """Remove the credentials from the spawner's env; when the user's last server stopped, forget them
        and delete those made for the servers (keystone_ec2 EC2 credentials)."""
        r = super().post_spawn_stop(user, spawner)
        if isawaitable(r):
            await r
        if self.s3_endpoints:
            keys = getattr(spawner, "_jhub_broker_s3_env", [])
            spawner.environment = {k: v for k, v in spawner.environment.items() if k not in keys}
            # credentials are per user: another running (named) server still uses them
            if any(s is not spawner and s.active for s in user.spawners.values()):
                return
            self.s3_broker.forget(user)
            await self.s3_broker.revoke(user)

    async def delete_user(self, user):
        """The user is deleted: delete what is left of the S3 credentials made for their servers."""
        r = super().delete_user(user)
        if isawaitable(r):
            await r
        if self.s3_endpoints:
            self.s3_broker.forget(user)
            left = await self.s3_broker.revoke(user)
            if left:
                self.log.warning("S3 credentials of deleted user %s remain at %s; remove them there",
                                 user.name, ", ".join(sorted(left)))

    def _keep_issued(self, old_state, auth_model):
        """A new auth_state (login, refresh) keeps the record of S3 credentials still to be deleted."""
        from .s3.broker import ISSUED_KEY
        if isinstance(auth_model, dict) and isinstance(auth_model.get("auth_state"), dict) \
                and (old_state or {}).get(ISSUED_KEY):
            auth_model["auth_state"].setdefault(ISSUED_KEY, old_state[ISSUED_KEY])
        return auth_model

    # -- discovery ---------------------------------------------------------
    @property
    def oidc(self):
        if self._oidc is None:
            self._oidc = OIDCIssuer(self.issuer, validate_cert=self.validate_server_cert)
        return self._oidc

    async def discover(self):
        """Fill authorize/token/userinfo URLs from discovery (once; explicit config wins)."""
        meta = await self.oidc.discover()
        if not self.authorize_url:
            self.authorize_url = meta["authorization_endpoint"]
        if not self.token_url:
            self.token_url = meta["token_endpoint"]
        if not self.userdata_url:
            self.userdata_url = meta["userinfo_endpoint"]
        return meta

    # -- rules -------------------------------------------------------------
    @property
    def rules(self):
        return AccessRules(allowed=list(self.allowed_entitlements), admin=list(self.admin_entitlements),
                           group_roles=list(self.group_roles), hierarchy=dict(self.role_hierarchy),
                           namespace=self.entitlement_namespace, authorities=list(self.trusted_authorities),
                           vo_format=self.group_name_format, subgroup_format=self.subgroup_name_format)

    def entitlements_of(self, auth_state):
        user_info = (auth_state or {}).get(self.user_auth_state_key) or {}
        return parse_entitlements(user_info.get(self.entitlement_claim))

    def render_refusal(self):
        return _templates.get_template("refused.html").render(
            required=self.rules.describe_required(), enrolment_url=self.enrolment_url,
            message=self.refusal_message)

    # -- oauthenticator hooks ---------------------------------------------
    async def authenticate(self, handler, data=None, **kwargs):
        await self.discover()
        auth_model = await super().authenticate(handler, data, **kwargs)
        if self.s3_endpoints and isinstance(auth_model, dict) and handler is not None \
                and hasattr(handler, "find_user"):
            existing = handler.find_user(self.normalize_username(auth_model["name"]))
            if existing is not None:
                self._keep_issued(await existing.get_auth_state(), auth_model)
        return auth_model

    async def build_auth_state_dict(self, token_info, user_info):
        state = super().build_auth_state_dict(token_info, user_info)
        now = time.time()
        expiries = []
        if token_info.get("expires_in"):
            expiries.append(now + float(token_info["expires_in"]))
        id_token = token_info.get("id_token")
        if id_token and self.verify_id_token:
            claims = await self.oidc.verify_id_token(id_token, self.client_id)
            if user_info.get("sub") and claims["sub"] != user_info["sub"]:
                raise ValueError("id_token and userinfo disagree on the subject")
            expiries.append(float(claims["exp"]))
        state["expires_at"] = min(expiries) if expiries else None
        return state

    async def update_auth_model(self, auth_model):
        decision = self.rules.decide(self.entitlements_of(auth_model["auth_state"]))
        if auth_model["name"] in self.admin_users or decision.admin:
            auth_model["admin"] = True
        elif self.admin_entitlements:
            auth_model["admin"] = False
        return auth_model

    async def get_user_groups(self, auth_state):
        return set(self.rules.groups(self.entitlements_of(auth_state)))

    async def check_allowed(self, username, auth_model):
        if await super().check_allowed(username, auth_model):
            return True
        if auth_model is None:
            return False
        return self.rules.decide(self.entitlements_of(auth_model.get("auth_state"))).allowed

    # -- refresh -----------------------------------------------------------
    def _expires_soon(self, auth_state):
        exp = auth_state.get("expires_at")
        return exp is not None and exp - time.time() < self.refresh_margin

    async def refresh_user(self, user, handler=None, **kwargs):
        """Refresh tokens near expiry, one refresh at a time per user."""
        if not self.enable_auth_state:
            return True
        await self.discover()
        lock = self._refresh_locks.setdefault(user.name, asyncio.Lock())
        async with lock:
            auth_state = await user.get_auth_state()
            if not auth_state:
                return False
            if not self._expires_soon(auth_state):
                return self._keep_issued(auth_state, await super().refresh_user(user, handler, **kwargs))
            refresh_token = auth_state.get("refresh_token")
            if not refresh_token:
                return False
            try:
                token_info = await self.get_token_info(handler, self.build_refresh_token_request_params(refresh_token))
                token_info.setdefault("refresh_token", refresh_token)
                auth_model = await self._token_to_auth_model(token_info)
            except Exception as e:  # noqa: BLE001
                self.log.info("Token refresh failed for %s (%s); a new login is needed",
                              user.name, type(e).__name__)
                return False
            self.log.info("Refreshed Check-in tokens for %s", user.name)
            self._keep_issued(auth_state, auth_model)
            # save now, so a caller waiting on the lock sees the new (rotated) refresh token
            await user.save_auth_state(auth_model["auth_state"])
            return auth_model
