"""Operator grants: groups or entitlement patterns -> buckets at read / write / admin.

Config entry: ``{"bucket": "gfts-reference-data", "level": "read", "groups": ["*"]}``,
``{"bucket": "gfts-vliz", "level": "write", "entitlements": ["vo.example.eu:vliz"]}``,
optional ``"endpoint"`` (name in ``s3_endpoints``; default the first) and ``"key"``
(static backend: the secrets-file entry; default the matching group).
"""
from dataclasses import dataclass
from fnmatch import fnmatchcase

LEVELS = ("read", "write", "admin")


@dataclass(frozen=True)
class Grant:
    bucket: str
    level: str
    endpoint: str
    key: str = ""     # static backend credential name

    @property
    def profile(self):
        return self.bucket


def resolve_grants(entries, groups, entitlements, rules, default_endpoint):
    """The user's grants, one per (endpoint, bucket), at the highest level granted. Never raises on bad entries."""
    best = {}
    for entry in entries:
        level = entry.get("level", "read")
        bucket = entry.get("bucket")
        if level not in LEVELS or not isinstance(bucket, str) or not bucket:
            continue
        matched_key = None
        for pattern in entry.get("groups", []):
            hit = next((g for g in sorted(groups) if fnmatchcase(g, pattern)), None)
            if hit is not None:
                matched_key = hit
                break
        if matched_key is None and rules.any_match(entry.get("entitlements", []), entitlements):
            matched_key = ""
        if matched_key is None:
            continue
        g = Grant(bucket, level, entry.get("endpoint") or default_endpoint, entry.get("key") or matched_key)
        k = (g.endpoint, g.bucket)
        if k not in best or LEVELS.index(level) > LEVELS.index(best[k].level):
            best[k] = g
    return sorted(best.values(), key=lambda g: (g.endpoint, g.bucket))
