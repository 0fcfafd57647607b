"""Parse EGI Check-in ``eduperson_entitlement`` values.

Form: ``urn:mace:egi.eu:group:<vo>[:<subgroup>...][:role=<role>]#<authority>``.
Anything else is kept raw with ``valid=False``; parsing never raises.
"""
from dataclasses import dataclass
import re

# one group path segment: no separators, no whitespace or control characters
_SEGMENT = re.compile(r"[^\s:#=/\x00-\x1f\x7f]+\Z")  # \Z, not $: "$" also matches before a trailing newline


@dataclass(frozen=True)
class Entitlement:
    raw: str
    namespace: str = ""
    vo: str = ""
    subgroups: tuple = ()
    role: str = ""
    authority: str = ""
    valid: bool = False

    @property
    def group_path(self):
        """``(vo, sub, ...)``, empty for an invalid value."""
        return (self.vo, *self.subgroups) if self.valid else ()

    def group_name(self, vo_format="{vo}", subgroup_format="{vo}:{subgroups}"):
        """The short JupyterHub group name, or None for an invalid value."""
        if not self.valid:
            return None
        if not self.subgroups:
            return vo_format.format(vo=self.vo, subgroups="")
        return subgroup_format.format(vo=self.vo, subgroups=":".join(self.subgroups))


def parse_entitlement(value):
    """Parse one entitlement; never raises."""
    try:
        raw = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 - objects with a broken __str__
        return Entitlement(raw="")
    invalid = Entitlement(raw=raw)
    body, sep, authority = raw.partition("#")
    if not sep or not authority or "#" in authority or not _SEGMENT.match(authority.replace(":", "_")):
        return invalid
    namespace, sep, rest = body.partition(":group:")
    if not sep or not namespace.startswith("urn:") or any(not s for s in namespace.split(":")):
        return invalid
    if any(c.isspace() or c == "#" for c in namespace):
        return invalid
    parts = rest.split(":")
    role = ""
    if parts and parts[-1].startswith("role="):
        role = parts.pop()[len("role="):]
        if not role or not _SEGMENT.match(role):
            return invalid
    if not parts or not all(_SEGMENT.match(p) for p in parts):
        return invalid
    return Entitlement(raw=raw, namespace=namespace, vo=parts[0], subgroups=tuple(parts[1:]),
                       role=role, authority=authority, valid=True)


def parse_entitlements(values):
    """Parse a claim value (list, single string or junk) into a tuple of Entitlements."""
    if values is None:
        return ()
    if isinstance(values, (str, bytes)):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        items = [values]
    return tuple(parse_entitlement(v) for v in items)
