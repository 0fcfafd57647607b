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
        if username in self.admin_users:
            # bootstrap (and live) admins get in with any method: JupyterHub only lets them in through
            # allowed_users, which a switch away from Check-in (allow_existing_users off) leaves empty
            return True
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


def _native():
    """NativeAuthenticator where the broker's allowed users and admins count as approved accounts.

    NativeAuthenticator lets a user log in once their sign-up is approved (``UserInfo.is_authorized``); it
    pre-approves, at sign-up, names in ``admin_users``/``allowed_users``. Here, additionally:

    - the live settings are read before a sign-up, so a user allowed (or made admin) on the broker's page a moment
      ago is pre-approved without a hub restart; the bootstrap admins of ``jupyterhub_config.py`` always are, so
      the first admin can sign up and log in at once (nobody would be there to approve them);
    - a user who signed up first and was allowed on the broker's page afterwards is approved at their next login;
    - an account approved on NativeAuthenticator's own page (``/hub/authorize``), or by ``open_signup``, may log
      in even though ``allow_all`` is off (else the hub refused it with a misleading "Invalid username or
      password"); "only admins may log in" still wins;
    - the sign-up page tells a pre-approved user they may log in now (not "sent to the admin");
    - its login page works on JupyterHub 6 (NativeAuthenticator 1.3 still times logins with ``statsd``, which
      JupyterHub 6 removed, so every login failed with a 500; and a refused form, e.g. an expired ``_xsrf``,
      crashed the error page instead of showing the login form with the reason).
    """
    from jinja2 import ChoiceLoader, FileSystemLoader
    from nativeauthenticator import NativeAuthenticator
    from nativeauthenticator.handlers import TEMPLATE_DIR, LoginHandler, SignUpHandler

    class _NoStats:
        def timer(self, *args, **kwargs):
            return self

        def start(self):
            return self

        def stop(self, *args, **kwargs):
            pass

        def incr(self, *args, **kwargs):
            pass

    class LiveLoginHandler(LoginHandler):
        _sync_render = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # NativeAuthenticator adds its templates to the hub's async Jinja environment only
            env = self.settings.get("jinja2_env_sync")
            if env is not None and not getattr(env, "_jhub_broker_native", False):
                env.loader = ChoiceLoader([env.loader, FileSystemLoader([TEMPLATE_DIR])])
                env._jhub_broker_native = True

        @property
        def statsd(self):
            return self.settings.get("statsd") or _NoStats()

        def render_template(self, name, **ns):
            if self._sync_render:
                ns["sync"] = True
            return super().render_template(name, **ns)

        def _render(self, login_error=None, username=None, sync=False, **kwargs):
            # JupyterHub renders a refused login form synchronously, with the error page's extra fields
            self._sync_render = sync
            try:
                return super()._render(login_error=login_error, username=username)
            finally:
                self._sync_render = False

    class LiveSignUpHandler(SignUpHandler):
        def get_result_message(self, user, assume_user_is_human, username_already_taken, confirmation_matches,
                               user_is_admin):
            approved = user_is_admin or bool(user is not None and user.is_authorized)
            return super().get_result_message(user, assume_user_is_human, username_already_taken,
                                              confirmation_matches, approved)

    class LiveNativeAuthenticator(LiveSettingsMixin, NativeAuthenticator):
        __doc__ = _native.__doc__

        def _approved_here(self, username):
            # allowed_users also holds existing hub users (allow_existing_users): they were let in before
            return username in self.admin_users or username in self.allowed_users

        def add_new_table(self):
            if self.db is None:  # instantiated outside the hub (the broker validating a config): no database
                return
            return super().add_new_table()

        def create_user(self, username, password, **kwargs):
            self.apply_live_settings()
            return super().create_user(username, password, **kwargs)

        async def authenticate(self, handler, data=None, **kwargs):
            self.apply_live_settings()
            name = self.normalize_username((data or {}).get("username") or "")
            info = self.get_user(name) if name else None
            if info is not None and not info.is_authorized and self._approved_here(name):
                self.log.info("Approving %s's sign-up: allowed by an admin", name)
                info.is_authorized = True
                self.db.commit()
            return await maybe_future(NativeAuthenticator.authenticate(self, handler, data))

        async def check_allowed(self, username, auth_model=None):
            if not (self._live or {}).get("admins_only"):
                info = self.get_user(username)
                if info is not None and info.is_authorized:
                    return True
            return await super().check_allowed(username, auth_model)

        def get_handlers(self, app):
            ours = {SignUpHandler: LiveSignUpHandler, LoginHandler: LiveLoginHandler}
            return [(path, ours.get(handler, handler)) for path, handler in super().get_handlers(app)]

    LiveNativeAuthenticator.__module__ = __name__
    LiveNativeAuthenticator.__qualname__ = "LiveNativeAuthenticator"
    return LiveNativeAuthenticator


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
    "LiveNativeAuthenticator": _native,
}


def __getattr__(name):
    """Classes over optional packages are built on first use (``import_item`` resolves them by name)."""
    if name in _LAZY:
        cls = _LAZY[name]()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
