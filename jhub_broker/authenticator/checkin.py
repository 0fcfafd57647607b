"""CheckinAuthenticator: EGI Check-in (or any OIDC issuer) on oauthenticator's GenericOAuthenticator.

It keeps GenericOAuthenticator's promises: ``userdata_from_id_token``, ``claim_groups_key`` /
``auth_state_groups_key`` (groups from a claim, merged with the entitlement groups), ``allowed_groups``,
``admin_groups``, ``refresh_user_hook`` and ``modify_auth_state_hook`` work as oauthenticator documents them;
a setting that cannot have an effect with the rest of the configuration is named in a warning at start-up.
"""
import asyncio
from functools import reduce
from inspect import isawaitable
import os
import time
from urllib.parse import urlsplit

import jinja2
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthLoginHandler
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Bool, Dict, Enum, Float, List, Unicode, default, observe

from .entitlements import parse_entitlements
from .oidc import OIDCIssuer
from .rules import DEFAULT_HIERARCHY, AccessRules
from .usernames import unacceptable_character

CHECKIN_ISSUERS = {
    "production": "https://aai.egi.eu/auth/realms/egi",
    "demo": "https://aai-demo.egi.eu/auth/realms/egi",
    "development": "https://aai-dev.egi.eu/auth/realms/egi",
}
# the authority (`#...` of an entitlement) each Check-in instance asserts memberships as
CHECKIN_AUTHORITIES = {urlsplit(url).hostname: env for env, url in CHECKIN_ISSUERS.items()}

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
    trusted_authorities = List(Unicode(), config=True,
                               help="Only entitlements issued by these authorities (`#...`) count; empty trusts "
                                    "any. Default: the Check-in instance's own (`aai.egi.eu` for production, so "
                                    "a VO membership made on the demo or development instance never counts "
                                    "there); for another issuer, all three Check-in instances.")

    @default("trusted_authorities")
    def _trusted_authorities_default(self):
        host = urlsplit(self.issuer).hostname
        if host in CHECKIN_AUTHORITIES:
            return [host]
        return list(CHECKIN_AUTHORITIES)
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
        self._groups_key_set = bool(os.environ.get("OAUTH2_GROUPS_KEY"))
        super().__init__(**kwargs)
        self._oidc = None
        self._refresh_locks = {}
        for line in self.ineffective_settings():
            self.log.warning("%s", line)

    @observe("claim_groups_key", "auth_state_groups_key")
    def _groups_key_changed(self, change):
        # oauthenticator's default key (`oauth_user.groups`) is not read: Check-in sends no groups claim, and
        # a claim nobody asked for must not give anyone groups (S3 grants and allowed_groups follow groups)
        self._groups_key_set = True

    def _configured(self):
        """Names of the traits the configuration sets for this class (or a parent class's section)."""
        return set(self._find_my_config(self.config))

    def ineffective_settings(self):
        """Warnings for settings that cannot have an effect with the rest of the configuration."""
        cfg = self._configured()
        out = []
        if not self.manage_groups:
            for name in ("group_roles", "group_name_format", "subgroup_name_format", "role_hierarchy"):
                if name in cfg:
                    out.append(f"{type(self).__name__}.{name} has no effect: manage_groups is False, so users "
                               "get no JupyterHub groups from their entitlements")
            if any(g.get("groups") for g in self.s3_grants):
                out.append(f"{type(self).__name__}.s3_grants by \"groups\" never match: manage_groups is False, "
                           "so users have no JupyterHub groups (grant by \"entitlements\" instead)")
        if not self.enable_auth_state:
            for name in ("refresh_user_hook", "refresh_margin"):
                if name in cfg:
                    out.append(f"{type(self).__name__}.{name} has no effect: enable_auth_state is False, so "
                               "there are no tokens to refresh")
            if any(ep.get("backend") in ("sts", "keystone_ec2") for ep in self.s3_endpoints.values()):
                out.append(f"{type(self).__name__}.s3_endpoints: the sts and keystone_ec2 backends use the "
                           "user's Check-in tokens, which are kept only with enable_auth_state = True")
        if "enable_pkce" in cfg and not self.enable_pkce and urlsplit(self.issuer).hostname in CHECKIN_AUTHORITIES:
            out.append(f"{type(self).__name__}.enable_pkce = False: EGI Check-in refuses authorization "
                       "requests without PKCE, so nobody can log in")
        env = CHECKIN_AUTHORITIES.get(urlsplit(self.issuer).hostname)
        if env in ("demo", "development"):
            out.append(f"{type(self).__name__} uses the EGI Check-in {env} instance ({self.issuer}): its accounts "
                       "and VO memberships are for testing, not for a production hub")
        if self.s3_endpoints:
            from .s3.scope import S3_SCOPE
            declared = getattr(self.parent, "custom_scopes", None)
            if declared is not None and S3_SCOPE not in declared:
                out.append(f"{type(self).__name__}.s3_endpoints: the hub does not declare the {S3_SCOPE} scope "
                           "(c.JupyterHub.custom_scopes), so no server can fetch S3 credentials; call "
                           "jhub_broker.authenticator.s3.scope.add_s3_scope(c) in jupyterhub_config.py")
        return out

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
        if not self.userdata_url and not self.userdata_from_id_token:
            # with userdata_from_id_token the user's claims come from the (verified) id_token instead
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
    def validate_username(self, username):
        """Also refuse names with control, format (bidi, zero-width) or separator characters: shown in a page
        or a log they would look like another user's name (`bob@egi.eu\\x00` shows as `bob@egi.eu`)."""
        if unacceptable_character(username) is not None:
            return False
        return super().validate_username(username)

    def _refuse_username(self, username):
        bad = unacceptable_character(username)
        if bad is None:
            return
        pos, char, what = bad
        self.log.warning("Refusing a login: the identity provider sent the user name %s (claim %r), which has %s "
                         "(U+%04X at position %d)", ascii(username), self.username_claim, what, ord(char), pos)
        raise web.HTTPError(403, "Your identity provider sent a user name with an invisible or control character "
                                 f"({what}, U+{ord(char):04X}); this hub cannot accept it. Ask your identity "
                                 "provider's support to correct your account.")

    async def authenticate(self, handler, data=None, **kwargs):
        await self.discover()
        auth_model = await super().authenticate(handler, data, **kwargs)
        if isinstance(auth_model, dict):
            self._refuse_username(auth_model["name"])
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
        """Entitlement groups, plus the groups of the configured claim (claim_groups_key/auth_state_groups_key)."""
        groups = set(self.rules.groups(self.entitlements_of(auth_state)))
        if self._groups_key_set:
            groups |= await self._claim_groups(auth_state or {})
        return groups

    async def _claim_groups(self, auth_state):
        key = self.auth_state_groups_key
        if callable(key):
            found = key(auth_state)
            if isawaitable(found):
                found = await found
        else:
            try:
                found = reduce(dict.get, key.split("."), auth_state)
            except TypeError:
                found = None
        if found is None:
            # a user without the claim (e.g. a Check-in account) simply has no claim groups
            self.log.debug("No groups at %s for this user", key)
            return set()
        if isinstance(found, str):
            found = [found]
        groups = set()
        for g in found:
            if isinstance(g, str) and g.strip() and unacceptable_character(g) is None and "/" not in g:
                groups.add(g)
            else:
                self.log.warning("Ignoring the group %s from %s: not a usable group name", ascii(g), key)
        return groups

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
        """Refresh tokens near expiry, one refresh at a time per user.

        As in oauthenticator, ``refresh_user_hook`` is asked first, whatever the tokens' state (also without
        auth_state): its answer (True, False or an auth model) wins; None goes on with the refresh below.
        """
        if not self.enable_auth_state:
            return True
        if self.refresh_user_hook is not None:
            # outside the lock: a hook may itself ask for the user's (refreshed) state
            refreshed = await self._call_refresh_user_hook(user, await user.get_auth_state())
            if refreshed is not None:
                return refreshed
        await self.discover()
        lock = self._refresh_locks.setdefault(user.name, asyncio.Lock())
        async with lock:
            auth_state = await user.get_auth_state()
            if not auth_state:
                self.log.info("No auth_state for %s: a new login is needed", user.name)
                return False
            if auth_state.get("token_response") and not self._expires_soon(auth_state):
                try:
                    auth_model = await self._token_to_auth_model(auth_state["token_response"])
                    return self._keep_issued(auth_state, auth_model)
                except HTTPClientError as e:
                    # the issuer refused the access token before its time (revoked): try the refresh token
                    if not 400 <= e.code < 500:
                        raise
                    self.log.info("The access token of %s was refused (%s); refreshing it", user.name, e.code)
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
