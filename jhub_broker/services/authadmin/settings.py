"""The live settings store: allowed users, admins, "only admins may log in", Check-in VO rules and S3 grants.

One row per setting in ``broker_auth_settings`` (the service's database). The service writes it; the hub's
authenticator (:mod:`jhub_broker.authenticator.live`) reads it at every login. Every write is audited.
"""
import json
import re
import unicodedata

from sqlalchemy import select

from ...authenticator.rules import Pattern
from ...authenticator.s3.grants import LEVELS
from ..db import Action, AuthSetting, utcnow
from ..environments.validation import ValidationError
from . import AUDIT_TARGET

LIVE_DEFAULTS = {
    "allowed_users": [],
    "admin_users": [],
    "admins_only": False,
    "allowed_entitlements": [],
    "admin_entitlements": [],
    "s3_grants": [],
}
_USERNAME = re.compile(r"^[^\s/\\<>\"'&]{1,255}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_.:*?\[\]=-]{1,255}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _invisible(text):
    """The first control, format (bidi overrides, zero-width), separator, private-use or unassigned character."""
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or (
                unicodedata.category(ch) == "Zs" and ch != " "):
            return ch
    return None


def validate_username(name):
    # a name with a NUL, a bidi override or a zero-width character shows as another user's name on every page
    bad = _invisible(name) if isinstance(name, str) else None
    if bad is not None:
        raise ValidationError(f"'{name.encode('unicode_escape').decode()[:80]}' is not a valid username: it "
                              f"contains the control or invisible character U+{ord(bad):04X} "
                              f"({unicodedata.name(bad, 'unnamed')}); type the name without it.")
    if not isinstance(name, str) or not _USERNAME.match(name.strip()):
        raise ValidationError(f"{str(name)[:80]!r} is not a valid username (1-255 characters, no spaces, "
                              "slashes, quotes or <>&).")
    return name.strip()


def validate_pattern(text):
    if not isinstance(text, str) or not _PATTERN.match(text.strip()):
        raise ValidationError(f"{str(text)[:80]!r} is not an entitlement pattern such as vo.example.eu, "
                              "vo.example.eu:analysis or vo.example.eu:role=manager.")
    p = Pattern.parse(text)
    if not p.group_glob:
        raise ValidationError(f"{text!r} names no group.")
    return text.strip()


def validate_grant(g):
    if not isinstance(g, dict):
        raise ValidationError("An S3 grant is an object {bucket, level, groups and/or entitlements}.")
    bucket = str(g.get("bucket", "")).strip()
    if not _BUCKET.match(bucket):
        raise ValidationError(f"{bucket[:80]!r} is not an S3 bucket name.")
    level = g.get("level", "read")
    if level not in LEVELS:
        raise ValidationError(f"level must be one of {', '.join(LEVELS)}.")
    groups = _strings(g.get("groups", []), "groups")
    for gr in groups:
        validate_pattern(gr)
    ents = [validate_pattern(p) for p in _strings(g.get("entitlements", []), "entitlements")]
    if not groups and not ents:
        raise ValidationError(f"The grant on {bucket} names no groups and no entitlements: nobody would get it.")
    out = {"bucket": bucket, "level": level, "groups": groups, "entitlements": ents}
    for k in ("endpoint", "key"):
        v = str(g.get(k) or "").strip()
        if v:
            if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", v):
                raise ValidationError(f"{k} {v[:80]!r} is not a valid name.")
            out[k] = v
    return out


def _strings(value, what):
    if isinstance(value, str):
        value = [s for s in (x.strip() for x in value.replace(",", "\n").splitlines()) if s]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{what} must be a list of strings.")
    return [v.strip() for v in value if v.strip()]


def load(db, keys=None):
    """All live settings (defaults for unset ones)."""
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in LIVE_DEFAULTS.items()}
    for row in db.scalars(select(AuthSetting)):
        if keys is None or row.key in keys:
            out[row.key] = json.loads(row.value_json)
    return out


def get(db, key, default=None):
    row = db.get(AuthSetting, key)
    if row is None:
        return LIVE_DEFAULTS.get(key, default) if default is None else default
    return json.loads(row.value_json)


def put(db, key, value, user):
    row = db.get(AuthSetting, key)
    if row is None:
        row = AuthSetting(key=key)
        db.add(row)
    row.value_json = json.dumps(value)
    row.updated_by, row.updated = user, utcnow()


def audit(db, user, action, detail, result="ok"):
    """One audit entry (who, what, when); ``detail`` must never hold a secret."""
    db.add(Action(user=user, action=action, target=AUDIT_TARGET, detail=detail[:4000], result=result,
                  finished=utcnow()))


def add_to_list(db, key, item, user):
    items = get(db, key)
    if item in items:
        return False
    put(db, key, items + [item], user)
    return True


def remove_from_list(db, key, item, user):
    items = get(db, key)
    if item not in items:
        return False
    put(db, key, [i for i in items if i != item], user)
    return True
