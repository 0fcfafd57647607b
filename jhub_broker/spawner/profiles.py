"""Operator-defined profiles: what a user may start (own VM or a container on a shared host), offered by
JupyterHub groups or EGI Check-in entitlements, and checked server-side at every start.

``c.OpenStackSpawner.profiles`` is a list of dicts (see the trait's help); :func:`parse_profiles` turns it into
:class:`Profile` objects or says which profile and which key are wrong.
"""
import logging
import re
from dataclasses import dataclass

from jupyterhub.traitlets import ByteSpecification
from tornado import web
from traitlets import TraitError

from ..authenticator.rules import Pattern
from .messages import clip

log = logging.getLogger("jhub_broker.spawner.profiles")

PLACEMENTS = ("dedicated", "shared")
# a slug goes into HTML ids, form values and log lines: keep it plain
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
_COMMON = {"slug", "display_name", "description", "placement", "image", "groups", "entitlements", "credits_per_day"}
KEYS = {"dedicated": _COMMON | {"flavor"}, "shared": _COMMON | {"cpu_limit", "mem_limit", "pool"}}


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str
    placement: str                 # "dedicated" (own VM) or "shared" (a container on a pool's host)
    image: str                     # VM image (dedicated) or container image (shared)
    flavor: str = ""               # dedicated
    cpu_limit: float = 0.0         # shared: vCPUs
    mem_limit: int = 0             # shared: bytes
    pool: str = ""                 # shared
    groups: tuple = ()             # JupyterHub group names
    entitlements: tuple = ()       # Check-in entitlement patterns (authenticator rules syntax)
    credits_per_day: float = None

    @property
    def restricted(self):
        return bool(self.groups or self.entitlements)


class ProfileConfigError(ValueError):
    """A profile in the configuration is wrong; the message names the profile and the key."""


class ProfileRefused(web.HTTPError):
    """A start asking for a profile the user may not use (403) or that does not exist (400).

    An HTTPError so the REST API answers with its status; ``jupyterhub_message`` is what the spawn page shows.
    """

    def __init__(self, status, message):
        super().__init__(status, "%s", message)
        self.jupyterhub_message = message


def parse_profiles(entries):
    """``entries`` (the trait's list of dicts) as a tuple of Profiles; ProfileConfigError names what to fix."""
    out, seen = [], set()
    for index, entry in enumerate(entries or []):
        profile = _parse_one(index, entry)
        if profile.slug in seen:
            raise ProfileConfigError(f"profiles[{index}] ({profile.slug!r}): key 'slug': {profile.slug!r} is "
                                     "already used by an earlier profile; slugs must be unique")
        seen.add(profile.slug)
        out.append(profile)
    return tuple(out)


def _parse_one(index, entry):
    where = f"profiles[{index}]"
    if not isinstance(entry, dict):
        raise ProfileConfigError(f"{where}: must be a dict, not {type(entry).__name__}")
    slug = entry.get("slug")
    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise ProfileConfigError(f"{where}: key 'slug' is missing or not a slug (lower-case letters, digits, "
                                 "'-' and '_', at most 63 characters)")
    where = f"{where} ({slug!r})"

    def fail(key, problem):
        raise ProfileConfigError(f"{where}: key {key!r} {problem}")

    placement = entry.get("placement")
    if placement not in PLACEMENTS:
        fail("placement", "must be 'dedicated' (an own VM) or 'shared' (a container on a pool's host)")
    unknown = sorted(set(entry) - KEYS[placement], key=str)
    if unknown:
        known = ", ".join(sorted(KEYS[placement]))
        fail(unknown[0], f"is not known for a {placement} profile (known keys: {known})")

    def text(key, required=False):
        value = entry.get(key, "")
        if not isinstance(value, str) or (required and not value.strip()):
            fail(key, "is missing: give a non-empty string" if required else "must be a string")
        return value.strip()

    def names(key):
        value = entry.get(key, [])
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                not all(isinstance(v, str) and v.strip() for v in value):
            fail(key, "must be a list of non-empty strings")
        return tuple(v.strip() for v in value)

    fields = {"slug": slug, "display_name": text("display_name") or slug, "description": text("description"),
              "placement": placement, "image": text("image", required=True),
              "groups": names("groups"), "entitlements": names("entitlements")}
    for pattern in fields["entitlements"]:
        if not Pattern.parse(pattern).group_glob:
            fail("entitlements", f"has {pattern!r}, which names no group (e.g. 'vo.example.eu:role=member')")
    credits = entry.get("credits_per_day")
    if credits is not None:
        if isinstance(credits, bool) or not isinstance(credits, (int, float)) or credits < 0:
            fail("credits_per_day", "must be a number >= 0 (or left out)")
        fields["credits_per_day"] = float(credits)
    if placement == "dedicated":
        fields["flavor"] = text("flavor", required=True)
    else:
        fields["pool"] = text("pool", required=True)
        cpu = entry.get("cpu_limit")
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0:
            fail("cpu_limit", "is missing: a shared profile needs a number of vCPUs > 0, e.g. 1 or 0.5")
        fields["cpu_limit"] = float(cpu)
        mem = entry.get("mem_limit")
        try:
            mem = None if mem is None or isinstance(mem, bool) else ByteSpecification().validate(None, mem)
        except (TraitError, TypeError, ValueError, IndexError):
            mem = None
        if not mem or mem <= 0:
            fail("mem_limit", "is missing: a shared profile needs a memory limit in bytes or as '2G', '512M'")
        fields["mem_limit"] = int(mem)
    return Profile(**fields)


def configured(spawner):
    """The spawner's profiles (parsed once per configuration)."""
    raw = spawner.profiles
    cache = spawner.__dict__.get("_parsed_profiles")
    if cache is None or cache[0] is not raw:
        cache = (raw, parse_profiles(raw))
        spawner.__dict__["_parsed_profiles"] = cache
    return cache[1]


_warned_no_entitlements = False


async def _entitlement_matcher(spawner):
    """A function pattern-list -> bool for the user's entitlements (from auth_state, as CheckinAuthenticator
    stores them, with its trust rules); one that never matches when the authenticator has none."""
    global _warned_no_entitlements
    auth = getattr(spawner, "authenticator", None)
    if not callable(getattr(auth, "entitlements_of", None)) or getattr(auth, "rules", None) is None:
        if not _warned_no_entitlements:
            _warned_no_entitlements = True
            log.warning("profiles restricted by 'entitlements' are offered to nobody by entitlement: the "
                        "authenticator (%s) keeps no Check-in entitlements", type(auth).__name__)
        return lambda patterns: False
    entitlements = auth.entitlements_of(await spawner.user.get_auth_state())
    rules = auth.rules
    return lambda patterns: rules.any_match(patterns, entitlements)


async def allowed_profiles(spawner):
    """The configured profiles this user may use, in configuration order.

    Unrestricted profiles (no ``groups``, no ``entitlements``) are for everyone; otherwise membership of one of
    the JupyterHub groups or a matching entitlement in the user's auth_state. Async: auth_state is read (and
    decrypted) only when a profile is restricted by entitlements.
    """
    profiles = configured(spawner)
    if not any(p.restricted for p in profiles):
        return list(profiles)
    groups = {g.name for g in spawner.user.groups}
    matcher = None
    out = []
    for p in profiles:
        ok = not p.restricted or bool(groups & set(p.groups))
        if not ok and p.entitlements:
            matcher = matcher or await _entitlement_matcher(spawner)
            ok = matcher(p.entitlements)
        if ok:
            out.append(p)
    return out


async def chosen_profile(spawner):
    """The profile of this start (``user_options["profile"]``), checked against what the user may use.

    None when no profiles are configured; the first allowed profile when the user sent none. A profile the user
    may not use is refused with 403, an unknown or malformed one with 400 (ProfileRefused).
    """
    profiles = configured(spawner)
    if not profiles:
        return None
    allowed = await allowed_profiles(spawner)
    offered = ", ".join(p.slug for p in allowed)
    requested = (spawner.user_options or {}).get("profile")
    if isinstance(requested, list) and len(requested) == 1:
        requested = requested[0]  # form data passed through unparsed
    if requested in (None, ""):
        if not allowed:
            raise ProfileRefused(403, "No profile of this hub is offered to you: ask the hub's administrators "
                                      "to add you to a group that may use one.")
        return allowed[0]
    if not isinstance(requested, str):
        raise ProfileRefused(400, '"profile" must be the slug of a profile (a string), e.g. '
                                  f'{{"profile": "{(allowed or profiles)[0].slug}"}}.')
    profile = next((p for p in profiles if p.slug == requested), None)
    if profile is None:
        raise ProfileRefused(400, f"There is no profile {clip(requested, 60)!r} on this hub. "
                                  + (f"Choose one of: {offered}." if allowed else "None is offered to you."))
    if profile not in allowed:
        log.warning("refused profile %s to %s: not in its groups or entitlements", profile.slug, spawner.user.name)
        raise ProfileRefused(403, f"You may not use the profile {profile.slug!r} ({clip(profile.display_name, 80)}):"
                                  " it is offered to other groups. "
                                  + (f"Choose one of: {offered}." if allowed else "None is offered to you."))
    return profile
