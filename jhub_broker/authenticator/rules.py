"""Who may log in, who is admin and which groups a user gets, from entitlements.

A pattern is ``<group-glob>[:role=<role>]``: ``vo.example.eu``,
``vo.example.eu:analysis``, ``vo.example.eu:role=manager``, ``vo.*.eu``.
Without a role the pattern asks for ``member``. Roles form a hierarchy
(``manager`` implies ``member``). Only valid entitlements from the trusted
namespace and authorities ever match.
"""
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

DEFAULT_HIERARCHY = {"manager": ["member"], "owner": ["manager", "member"]}


def implied_roles(role, hierarchy):
    """``role`` and every role it implies (transitively)."""
    seen, todo = set(), [role]
    while todo:
        r = todo.pop()
        if r and r not in seen:
            seen.add(r)
            todo.extend(hierarchy.get(r, ()))
    return seen


@dataclass(frozen=True)
class Pattern:
    group_glob: str
    role: str = "member"

    @classmethod
    def parse(cls, text):
        text = text.strip()
        head, sep, role = text.rpartition(":role=")
        if sep and role:
            return cls(head, role)
        return cls(text)

    def __str__(self):
        return f"{self.group_glob} (role {self.role})"


@dataclass
class Decision:
    allowed: bool
    admin: bool
    groups: list = field(default_factory=list)


@dataclass
class AccessRules:
    allowed: list = field(default_factory=list)       # patterns (str)
    admin: list = field(default_factory=list)
    group_roles: list = field(default_factory=lambda: ["member"])
    hierarchy: dict = field(default_factory=lambda: dict(DEFAULT_HIERARCHY))
    namespace: str = "urn:mace:egi.eu"
    authorities: list = field(default_factory=lambda: ["aai.egi.eu", "aai-demo.egi.eu", "aai-dev.egi.eu"])
    vo_format: str = "{vo}"
    subgroup_format: str = "{vo}:{subgroups}"

    def trusted(self, ent):
        return (ent.valid and ent.namespace == self.namespace
                and (not self.authorities or ent.authority in self.authorities))

    def has_role(self, ent, role):
        return role in implied_roles(ent.role, self.hierarchy)

    def matches(self, pattern, ent):
        if isinstance(pattern, str):
            pattern = Pattern.parse(pattern)
        return (self.trusted(ent) and fnmatchcase(":".join(ent.group_path), pattern.group_glob)
                and self.has_role(ent, pattern.role))

    def any_match(self, patterns, entitlements):
        return any(self.matches(p, e) for p in patterns for e in entitlements)

    def groups(self, entitlements):
        names = set()
        for e in entitlements:
            if self.trusted(e) and any(self.has_role(e, r) for r in self.group_roles):
                name = e.group_name(self.vo_format, self.subgroup_format)
                if name:
                    names.add(name)
        return sorted(names)

    def decide(self, entitlements):
        return Decision(allowed=self.any_match(self.allowed, entitlements),
                        admin=self.any_match(self.admin, entitlements),
                        groups=self.groups(entitlements))

    def describe_required(self):
        """Human text for the refusal page."""
        return [str(Pattern.parse(p)) for p in self.allowed]
