"""The entitlement parser never crashes, and malformed or foreign values never grant anything."""
from hypothesis import example, given, settings, strategies as st

from jhub_broker.authenticator.entitlements import parse_entitlement, parse_entitlements
from jhub_broker.authenticator.rules import AccessRules

VALID = "urn:mace:egi.eu:group:vo.example.eu:analysis:role=manager#aai.egi.eu"
RULES = AccessRules(allowed=["vo.example.eu", "vo.example.eu:*"], admin=["vo.example.eu:role=manager"])


def test_parses_checkin_forms():
    e = parse_entitlement(VALID)
    assert (e.namespace, e.vo, e.subgroups, e.role, e.authority) == (
        "urn:mace:egi.eu", "vo.example.eu", ("analysis",), "manager", "aai.egi.eu")
    assert e.group_name() == "vo.example.eu:analysis"
    assert e.group_name(subgroup_format="{vo}/{subgroups}") == "vo.example.eu/analysis"
    assert not parse_entitlement("vo.example.eu").valid
    assert parse_entitlement(12).raw == "12"


def test_role_hierarchy_and_authority():
    member = parse_entitlements(["urn:mace:egi.eu:group:vo.example.eu:role=member#aai.egi.eu"])
    manager = parse_entitlements(["urn:mace:egi.eu:group:vo.example.eu:role=manager#aai.egi.eu"])
    foreign = parse_entitlements(["urn:mace:egi.eu:group:vo.example.eu:role=manager#evil.example.com"])
    assert RULES.decide(member).allowed and not RULES.decide(member).admin
    assert RULES.decide(manager).allowed and RULES.decide(manager).admin
    assert RULES.decide(manager).groups == ["vo.example.eu"]
    assert not RULES.decide(foreign).allowed and RULES.decide(foreign).groups == []


def _grants(value):
    d = RULES.decide(parse_entitlements([value]))
    return d.allowed or d.admin


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(), st.binary(), st.integers(), st.none(), st.lists(st.text())))
def test_random_values_never_crash_never_grant(value):
    ents = parse_entitlements(value)
    assert all(isinstance(e.raw, str) for e in ents)
    d = RULES.decide(ents)
    # random text is almost never a trusted egi.eu entitlement; when it grants, it must be one
    for e in ents:
        if e.valid and RULES.trusted(e):
            return
    assert not (d.allowed or d.admin or d.groups)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, len(VALID)), st.integers(0, 5), st.text(max_size=4))
@example(34, 1, "\n")  # found by CI: a newline ending the VO name slipped through a "$"-anchored pattern
def test_mutated_groups_are_wellformed(pos, cut, insert):
    d = RULES.decide(parse_entitlements([VALID[:pos] + insert + VALID[pos + cut:]]))
    for g in d.groups:
        assert g and "#" not in g and not any(c.isspace() for c in g)


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, len(VALID)), st.integers(0, 5), st.text(max_size=4))
def test_mutated_entitlements_grant_only_when_still_wellformed(pos, cut, insert):
    value = VALID[:pos] + insert + VALID[pos + cut:]
    e = parse_entitlement(value)
    if _grants(value):
        # anything that grants is a well-formed, trusted entitlement of the configured VO
        assert e.valid and e.namespace == "urn:mace:egi.eu" and e.authority == "aai.egi.eu"
        assert e.vo == "vo.example.eu"
        assert e.raw == value
        assert ":".join([e.namespace, "group", *e.group_path]) + (f":role={e.role}" if e.role else "") \
            + "#" + e.authority == value
