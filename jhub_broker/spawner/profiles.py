"""Operator-defined profiles (MINIMAL STAND-IN written by the pool slice so its tests run; the profiles
slice's module replaces it on merge, with the form and full server-side validation)."""
from dataclasses import dataclass, field

from jupyterhub.spawner import SpawnException


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str = ""
    description: str = ""
    placement: str = "dedicated"
    image: str = ""
    flavor: str = ""
    cpu_limit: float = 1.0
    mem_limit: int = 2 * 2 ** 30
    pool: str = ""
    groups: tuple = field(default_factory=tuple)
    entitlements: tuple = field(default_factory=tuple)
    credits_per_day: float = 0.0


def _profile(d):
    d = dict(d)
    d["groups"] = tuple(d.get("groups", ()))
    d["entitlements"] = tuple(d.get("entitlements", ()))
    return Profile(**d)


def chosen_profile(spawner):
    """The profile of this spawn (the user's choice, else the first they may use); None without profiles."""
    profiles = [_profile(p) for p in (getattr(spawner, "profiles", None) or [])]
    if not profiles:
        return None
    groups = {g.name for g in getattr(spawner.user, "groups", [])}
    allowed = [p for p in profiles if not p.groups or groups & set(p.groups)]
    slug = (spawner.user_options or {}).get("profile")
    for p in allowed:
        if slug in (None, "", p.slug):
            return p
    raise SpawnException(f"You may not use the profile {slug!r}.", reason="profile")
