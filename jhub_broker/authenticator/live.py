"""Authenticators that read the broker service's live settings at every login.

The broker service (``/services/broker/auth``) stores allowed users, admins, "only admins may log in", Check-in
VO rules and S3 grants in its database. :class:`LiveSettingsMixin` reads them from that database at each
login (and before each server start, for S3 grants) and merges them with what ``jupyterhub_config.py`` sets.

Why the database and not the service's REST API: the hub then depends on nothing but a file (or the PostgreSQL
server it may already use): logins keep working while the service restarts or is down, there is no token to
provision and no HTTP round trip per login. If the database cannot be read, the last settings read stay in force
(logged), so an outage neither locks admins out nor re-admits removed users.

Works with any authenticator through its ``check_allowed`` / ``is_admin`` hooks; ready-made classes are
``LiveCheckinAuthenticator``, ``LiveOIDCAuthenticator``, ``LiveGenericOAuthenticator``,
``LiveGitLabOAuthenticator``, ``LiveAzureAdOAuthenticator``, ``LivePAMAuthenticator``,
``LiveDummyAuthenticator`` and ``LiveNativeAuthenticator`` (needs jupyterhub-nativeauthenticator).
"""
import os

from jupyterhub.auth import DummyAuthenticator, PAMAuthenticator
from jupyterhub.utils import maybe_future
from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

LIST_TRAITS = ("allowed_entitlements", "admin_entitlements", "s3_grants")


class LiveSettingsMixin(LoggingConfigurable):
    live_settings_url = Unicode(
        config=True,
        help="SQLAlchemy URL of the broker service's database holding the live settings "
             "(jhub_broker.configure sets it). Empty: no live settings, only jupyterhub_config.py. "
             "Default: $JHUB_BROKER_SETTINGS_DB.")

    @default("live_settings_url")
    def _live_settings_url_default(self):
        return os.environ.get("JHUB_BROKER_SETTINGS_DB", "")

    _live_factory = None
    _live = None
    _live_base = None
    _live_added = frozenset()

    def load_live_settings(self):
        """The live settings, or the last ones read if the database cannot be read now (None before any)."""
        if not self.live_settings_url:
            return None
        try:
            from ..services.authadmin import settings
            from ..services.db import make_session_factory
            if self._live_factory is None:
                self._live_factory = make_session_factory(self.live_settings_url)
            with self._live_factory() as db:
                self._live = settings.load(db)
        except Exception as e:  # noqa: BLE001 - keep the last good settings
            self.log.error("Cannot read the broker's live settings (%s: %s); keeping the last ones read",
                           type(e).__name__, e)
        return self._live

    def apply_live_settings(self):
        """Merge the live settings into this authenticator's traits (config values always stay)."""
        live = self.load_live_settings()
        if live is None:
            return
        if self._live_base is None:
            self._live_base = {"allowed_users": set(self.allowed_users), "admin_users": set(self.admin_users),
                               "allow_all": self.allow_all}
            for t in LIST_TRAITS:
                if self.has_trait(t):
                    self._live_base[t] = list(getattr(self, t))
        base = self._live_base
        admins = set(live.get("admin_users", []))
        allowed = set(live.get("allowed_users", [])) | admins
        self.admin_users = base["admin_users"] | admins
        # keep names the hub added at run time (allow_existing_users); drop live names no longer listed
        stale = set(self._live_added) - allowed - base["allowed_users"]
        self.allowed_users = (set(self.allowed_users) - stale) | allowed
        self._live_added = frozenset(allowed)
        self.allow_all = False if live.get("admins_only") else base["allow_all"]
        for t in LIST_TRAITS:
            if t in base:
                extra = [x for x in live.get(t, []) if x not in base[t]]
                setattr(self, t, base[t] + extra)

    async def authenticate(self, handler, data=None, **kwargs):
        self.apply_live_settings()
        return await maybe_future(super().authenticate(handler, data, **kwargs))

    async def check_allowed(self, username, auth_model=None):
        if (self._live or {}).get("admins_only"):
            ok = username in self.admin_users or bool((auth_model or {}).get("admin"))
            if not ok:
                self.log.info("Only admins may log in now; refusing %s", username)
            return ok
        return await maybe_future(super().check_allowed(username, auth_model))

    async def is_admin(self, handler, authentication):
        if authentication["name"] in self.admin_users:
            return True
        return await maybe_future(super().is_admin(handler, authentication))

    async def pre_spawn_start(self, user, spawner):
        self.apply_live_settings()  # S3 grants as of now
        return await maybe_future(super().pre_spawn_start(user, spawner))


def _live(base, name, doc, **defaults):
    ns = {"__doc__": doc, "__module__": __name__}
    for trait, value in defaults.items():
        ns[f"_{trait}_live_default"] = default(trait)(lambda self, v=value: v)
    return type(name, (LiveSettingsMixin, base), ns)


LiveDummyAuthenticator = _live(DummyAuthenticator, "LiveDummyAuthenticator", "DummyAuthenticator + live settings.")
LivePAMAuthenticator = _live(PAMAuthenticator, "LivePAMAuthenticator", "PAMAuthenticator + live settings.")


def _checkin():
    from .checkin import CheckinAuthenticator
    return CheckinAuthenticator


_LAZY = {
    "LiveCheckinAuthenticator": lambda: _live(_checkin(), "LiveCheckinAuthenticator",
                                              "EGI Check-in + live settings."),
    "LiveOIDCAuthenticator": lambda: _live(
        _checkin(), "LiveOIDCAuthenticator", "Any OIDC issuer (discovery) + live settings.",
        username_claim="preferred_username", scope=["openid", "profile", "email"],
        login_service="OpenID Connect", trusted_authorities=[], manage_groups=False),
    "LiveGenericOAuthenticator": lambda: _live(
        __import__("oauthenticator.generic", fromlist=["x"]).GenericOAuthenticator,
        "LiveGenericOAuthenticator", "oauthenticator's GenericOAuthenticator + live settings."),
    "LiveGitLabOAuthenticator": lambda: _live(
        __import__("oauthenticator.gitlab", fromlist=["x"]).GitLabOAuthenticator,
        "LiveGitLabOAuthenticator", "GitLab + live settings."),
    "LiveAzureAdOAuthenticator": lambda: _live(
        __import__("oauthenticator.azuread", fromlist=["x"]).AzureAdOAuthenticator,
        "LiveAzureAdOAuthenticator", "Azure AD + live settings."),
    "LiveNativeAuthenticator": lambda: _live(
        __import__("nativeauthenticator", fromlist=["x"]).NativeAuthenticator,
        "LiveNativeAuthenticator", "NativeAuthenticator (local sign-up, admins approve) + live settings."),
}


def __getattr__(name):
    """Classes over optional packages are built on first use (``import_item`` resolves them by name)."""
    if name in _LAZY:
        cls = _LAZY[name]()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
