"""GenericOAuthenticator's settings keep their promises on CheckinAuthenticator (issue 11, item 16).

Each through a real hub and the Check-in stand-in. The stand-in's test account gina has no VO entitlement but a
``groups`` claim (hub-users, hub-admins), as another OIDC provider would send.
"""
import logging

from jupyterhub.app import JupyterHub
from traitlets.config import Config

from jhub_broker.authenticator import CheckinAuthenticator

from .conftest import CLIENT_ID


async def test_userdata_from_id_token_logs_in_with_the_id_token_claims(checkin_hub, browser_login):
    app = await checkin_hub(userdata_from_id_token=True)
    _, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200, r.text[:500]
    assert r.url.endswith("/hub/home")
    auth = app.authenticator
    assert auth.userdata_url == "", "discovery must not fill userdata_url when the id_token is the source"
    user = app.users["alice@egi.eu"]
    state = await user.get_auth_state()
    # the claims are the id_token's (userinfo has no audience): entitlements came with it
    assert state["oauth_user"]["aud"] == CLIENT_ID
    assert sorted(g.name for g in user.groups) == ["vo.example.eu", "vo.example.eu:analysis"]
    refreshed = await auth.refresh_user(user)
    assert isinstance(refreshed, dict) and refreshed["name"] == "alice@egi.eu"


async def test_groups_claim_is_merged_and_allowed_and_admin_groups_count(checkin_hub, browser_login):
    app = await checkin_hub(claim_groups_key="groups", allowed_groups={"hub-users", "vo.other.eu"},
                            admin_groups={"hub-admins"})
    # gina: no entitlement, let in and made admin by her groups claim alone
    _, r = await browser_login("gina", "gina-pw")
    assert r.status_code == 200, r.text[:500]
    gina = app.users["gina@egi.eu"]
    assert sorted(g.name for g in gina.groups) == ["hub-admins", "hub-users"]
    assert gina.admin
    # alice: entitlement groups, no claim groups (Check-in sends none), not admin
    _, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200
    alice = app.users["alice@egi.eu"]
    assert sorted(g.name for g in alice.groups) == ["vo.example.eu", "vo.example.eu:analysis"]
    assert not alice.admin
    # carol: not allowed by entitlements, but allowed_groups names a group her trusted entitlement gives
    _, r = await browser_login("carol", "carol-pw")
    assert r.status_code == 200, r.text[:500]
    assert [g.name for g in app.users["carol@egi.eu"].groups] == ["vo.other.eu"]


async def test_groups_claim_counts_only_when_configured(checkin_hub, browser_login):
    # oauth_user.groups is oauthenticator's default key: without a setting naming it, the claim gives nothing
    app = await checkin_hub(allowed_groups={"hub-users"})
    _, r = await browser_login("gina", "gina-pw")
    assert r.status_code == 403
    assert app.users.get("gina@egi.eu") is None


async def test_auth_state_groups_key_works_as_claim_groups_key(checkin_hub, browser_login):
    # oauthenticator 17's name for the setting
    app = await checkin_hub(auth_state_groups_key="oauth_user.groups", allowed_groups={"hub-users"})
    _, r = await browser_login("gina", "gina-pw")
    assert r.status_code == 200
    assert sorted(g.name for g in app.users["gina@egi.eu"].groups) == ["hub-admins", "hub-users"]
    assert not app.users["gina@egi.eu"].admin   # no admin_groups here


HOOK_CALLS = []


def refresh_hook(authenticator, user, auth_state):
    HOOK_CALLS.append((user.name, auth_state is not None and authenticator._expires_soon(auth_state)))
    # without auth_state: this deployment decides the user is fine (oauthenticator lets the hook decide)
    return True if auth_state is None else None


async def test_refresh_user_hook_runs_near_expiry_and_without_auth_state(checkin_hub, browser_login):
    # a margin longer than the tokens live: every refresh finds the tokens about to expire
    app = await checkin_hub(refresh_user_hook=refresh_hook, refresh_margin=100_000)
    _, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200
    user = app.users["alice@egi.eu"]
    before = await user.get_auth_state()
    HOOK_CALLS.clear()
    refreshed = await app.authenticator.refresh_user(user)
    assert ("alice@egi.eu", True) in HOOK_CALLS, HOOK_CALLS
    # the hook answered None: the refresh went on and got new tokens
    assert refreshed["auth_state"]["access_token"] != before["access_token"]
    # no auth_state: the hook is asked too, and its answer wins over "log in again"
    await user.save_auth_state(None)
    HOOK_CALLS.clear()
    assert await app.authenticator.refresh_user(user) is True
    assert HOOK_CALLS == [("alice@egi.eu", False)]


def _warnings_of(caplog, **settings):
    c = Config()
    for k, v in settings.items():
        setattr(c.CheckinAuthenticator, k, v)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        # the hub's log, propagating to pytest's capture
        CheckinAuthenticator(config=c, parent=JupyterHub(config=c, log=logging.getLogger("jb-test-hub")))
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_settings_without_effect_are_named_at_start_up(caplog):
    issuer = "http://127.0.0.1:9/auth/realms/egi"
    assert _warnings_of(caplog, issuer=issuer) == []
    found = _warnings_of(caplog, issuer=issuer, manage_groups=False, group_name_format="vo-{vo}",
                         s3_grants=[{"bucket": "b", "level": "read", "groups": ["vo.example.eu"]}])
    assert any("group_name_format has no effect" in w and "manage_groups is False" in w for w in found), found
    assert any("s3_grants" in w and "never match" in w for w in found), found
    found = _warnings_of(caplog, issuer=issuer, enable_auth_state=False, refresh_margin=60.0,
                         refresh_user_hook=refresh_hook)
    assert any("refresh_margin has no effect" in w for w in found), found
    assert any("refresh_user_hook has no effect" in w for w in found), found
    found = _warnings_of(caplog, enable_pkce=False)
    assert any("enable_pkce = False" in w for w in found), found
    # S3 endpoints on a hub that does not declare the scope the servers need
    found = _warnings_of(caplog, issuer=issuer, s3_endpoints={"s3": {"url": "http://127.0.0.1:9"}})
    assert any("custom:s3-credentials" in w and "add_s3_scope" in w for w in found), found
