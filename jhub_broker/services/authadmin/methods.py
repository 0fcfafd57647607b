"""Authentication methods the page offers, their settings, and the config fragment they generate."""
import datetime
import re
from urllib.parse import quote

from ...authenticator.secrets import encrypt, decrypt, mask
from ..environments.validation import ValidationError

LIVE = "jhub_broker.authenticator.live."


def F(name, label, kind="str", required=False, default=None, help="", choices=None):
    return {"name": name, "label": label, "kind": kind, "required": required, "default": default, "help": help,
            "choices": choices}


OAUTH = [F("client_id", "Client id", required=True),
         F("client_secret", "Client secret", kind="secret", required=True),
         F("oauth_callback_url", "Callback URL", required=True, help="https://<hub>/hub/oauth_callback")]
COMMON = [F("username_pattern", "Usernames must match (regular expression)", default="",
            help="Logins with other names are refused. Existing admins must match, or the hub will not start."),
          F("login_service", "Login button label", default="")]
# a password form has no login button: JupyterHub's Authenticator.login_service is no trait, a value would be lost
FORM_COMMON = COMMON[:1]

METHODS = {
    "egi-checkin": {"label": "EGI Check-in", "class": LIVE + "LiveCheckinAuthenticator", "oauth": True,
                    "fields": [F("checkin_env", "Check-in instance", kind="choice", default="production",
                                 choices=["production", "demo", "development"]),
                               F("issuer", "Issuer URL (overrides the instance)", default="")] + OAUTH + COMMON},
    "generic-oidc": {"label": "Generic OpenID Connect", "class": LIVE + "LiveOIDCAuthenticator", "oauth": True,
                     "fields": [F("issuer", "Issuer URL", required=True),
                                F("username_claim", "Username claim", default="preferred_username")]
                     + OAUTH + COMMON},
    "gitlab": {"label": "GitLab", "class": LIVE + "LiveGitLabOAuthenticator", "oauth": True,
               "fields": [F("gitlab_url", "GitLab URL", default="https://gitlab.com", required=True),
                          F("allowed_gitlab_groups", "Allowed GitLab groups", kind="list", default=[])]
               + OAUTH + COMMON},
    "azuread": {"label": "Azure AD (Entra ID)", "class": LIVE + "LiveAzureAdOAuthenticator", "oauth": True,
                "fields": [F("tenant_id", "Tenant id", required=True)] + OAUTH + COMMON},
    "native": {"label": "Local accounts (NativeAuthenticator: sign-up, admins approve)",
               "class": LIVE + "LiveNativeAuthenticator", "oauth": False,
               "fields": [F("open_signup", "Anyone who signs up may log in", kind="bool", default=False),
                          F("minimum_password_length", "Minimum password length", kind="int", default=10)]
               + FORM_COMMON},
    "pam": {"label": "Local Linux accounts (PAM)", "class": LIVE + "LivePAMAuthenticator", "oauth": False,
            "fields": FORM_COMMON},
    # checks no secret of the user's own: any password, or one password shared by everyone, logs in as any
    # allowed name (admins included); offered only where the operator allows it (BrokerService)
    "dummy": {"label": "Dummy (tests and demos only: any password, or the shared one)",
              "class": LIVE + "LiveDummyAuthenticator", "oauth": False, "insecure": True,
              "fields": [F("password", "Shared password", kind="secret", default="")] + FORM_COMMON},
}


INSECURE_HINT = ("set BrokerService.allow_insecure_login_methods = True (e.g. jhub_broker.configure(c, service_args="
                 "['--BrokerService.allow_insecure_login_methods=True'])) in jupyterhub_config.py, for tests and "
                 "demos only")


def offered(allow_insecure=False):
    """The methods the page offers and the API accepts."""
    return {k: v for k, v in METHODS.items() if allow_insecure or not v.get("insecure")}


def issuer_of(kind, settings):
    """The OIDC issuer a method's settings point to (for the pre-switch test)."""
    from ...authenticator.checkin import CHECKIN_ISSUERS
    if kind == "egi-checkin":
        return settings.get("issuer") or CHECKIN_ISSUERS[settings.get("checkin_env") or "production"]
    if kind == "generic-oidc":
        return settings.get("issuer", "")
    if kind == "gitlab":
        return settings.get("gitlab_url") or "https://gitlab.com"
    if kind == "azuread":
        return f"https://login.microsoftonline.com/{quote(settings.get('tenant_id', ''), safe='')}/v2.0"
    return ""


def login_expectation(record):
    """What the hub's login must do with ``record`` for the bootstrap admin to log in (see restart.login_works):
    serve its password form, or send the browser to the configured provider with the configured client."""
    if not record or not METHODS[record["kind"]]["oauth"]:
        return {"oauth": False}
    st = record["settings"]
    issuer = issuer_of(record["kind"], st)
    return {"oauth": True, "provider": issuer, "client_id": st.get("client_id", ""),
            "redirect_uri": st.get("oauth_callback_url", "")}


def _coerce(field, raw):
    k = field["kind"]
    if k == "bool":
        return raw in (True, "1", "true", "on", "yes")
    if k == "int":
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValidationError(f"{field['label']} must be a number.")
    if k == "list":
        if isinstance(raw, str):
            raw = [s.strip() for s in raw.replace(",", "\n").splitlines() if s.strip()]
        if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            raise ValidationError(f"{field['label']} must be a list of strings.")
        return raw
    if not isinstance(raw, str):
        raise ValidationError(f"{field['label']} must be text.")
    raw = raw.strip()
    if "\n" in raw or "\r" in raw or len(raw) > 2000:
        raise ValidationError(f"{field['label']} must be one line.")
    if k == "choice" and raw not in field["choices"]:
        raise ValidationError(f"{field['label']} must be one of {', '.join(field['choices'])}.")
    return raw


def build(kind, data, previous=None, allow_insecure=False):
    """Validated method record ``{"kind", "settings", "secrets"}`` (secrets encrypted) from form/JSON ``data``.

    An empty secret field keeps the stored secret of the same method. Methods that check no secret of the user's
    own (Dummy) are refused unless ``allow_insecure``."""
    if kind in METHODS and METHODS[kind].get("insecure") and not allow_insecure:
        raise ValidationError(f"{METHODS[kind]['label']} lets anyone log in as any allowed user, admins included, "
                              f"so it is not offered on this hub. To allow it, {INSECURE_HINT}.")
    if kind not in METHODS:
        raise ValidationError(f"Unknown method {str(kind)[:40]!r}; one of {', '.join(offered(allow_insecure))}.")
    prev = previous if previous and previous.get("kind") == kind else {"settings": {}, "secrets": {}}
    settings, secrets = {}, {}
    for f in METHODS[kind]["fields"]:
        raw = data.get(f["name"])
        if f["kind"] == "secret":
            if raw:
                secrets[f["name"]] = encrypt(_coerce(f, raw))
            elif prev["secrets"].get(f["name"]):
                secrets[f["name"]] = prev["secrets"][f["name"]]
            elif f["required"]:
                raise ValidationError(f"{f['label']} is required.")
            continue
        value = _coerce(f, raw) if raw not in (None, "") else (False if f["kind"] == "bool" and raw == "" else
                                                                f["default"])
        if f["required"] and value in (None, "", []):
            raise ValidationError(f"{f['label']} is required.")
        if f["name"] == "username_pattern" and value:
            try:
                re.compile(value)
            except re.error as e:
                raise ValidationError(f"Usernames pattern is not a regular expression: {e}")
        if f["name"] in ("issuer", "gitlab_url", "oauth_callback_url") and value and \
                not re.match(r"^https?://[^\s'\"<>]+$", value):
            raise ValidationError(f"{f['label']} must be an http(s) URL.")
        if value not in (None, ""):
            settings[f["name"]] = value
    return {"kind": kind, "settings": settings, "secrets": secrets}


def masked(record):
    """The record as pages and the API show it: secrets masked."""
    if not record:
        return None
    out = {"kind": record["kind"], "label": METHODS.get(record["kind"], {}).get("label", record["kind"]),
           "settings": dict(record.get("settings", {})), "secrets": {}}
    for name, token in record.get("secrets", {}).items():
        try:
            out["secrets"][name] = mask(decrypt(token))
        except Exception:  # noqa: BLE001 - a key change must not break the page
            out["secrets"][name] = "(cannot be decrypted with the current key)"
    return out


def plain_secrets(record):
    return [decrypt(t) for t in (record or {}).get("secrets", {}).values()]


def render_fragment(record, user):
    """The Python config fragment for ``record``; secrets stay encrypted (decrypted by the hub at load)."""
    spec = METHODS[record["kind"]]
    cls = spec["class"]
    section = cls.rsplit(".", 1)[1]
    who = re.sub(r"[^A-Za-z0-9_.@-]", "_", user)[:80]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"# Generated by the jhub_broker service (authentication method page) at {now} for {who}.",
        "# Do not edit by hand: the next change made on the page replaces this file (backups are kept next to it).",
        f"# Method: {spec['label']}",
        "from jhub_broker.authenticator.secrets import decrypt",
        "",
        f"c.JupyterHub.authenticator_class = {cls!r}",
    ]
    if not spec["oauth"]:
        # a password form: an auto_login set in jupyterhub_config.py for an OAuth method (the demo's Check-in)
        # would make /hub/login authenticate without the form, a 500 that locks everyone out
        lines.append(f"c.{section}.auto_login = False")
    for name, value in sorted(record.get("settings", {}).items()):
        lines.append(f"c.{section}.{name} = {value!r}")
    for name, token in sorted(record.get("secrets", {}).items()):
        lines.append(f"c.{section}.{name} = decrypt({token!r})")
    return "\n".join(lines) + "\n"


def required_traits(kind):
    return [f["name"] for f in METHODS[kind]["fields"] if f["required"]]
