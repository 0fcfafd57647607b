"""Users log in through the full redirect flow against the real OIDC provider and a real hub."""
import asyncio

from .conftest import ENROL_URL


async def test_member_logs_in_gets_groups_not_admin(checkin_hub, browser_login):
    app = await checkin_hub()
    session, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200, r.text[:500]
    assert r.url.endswith("/hub/home")
    assert "alice@egi.eu" in r.text  # the hub page names the logged-in user
    user = app.users["alice@egi.eu"]
    assert sorted(g.name for g in user.groups) == ["vo.example.eu", "vo.example.eu:analysis"]
    assert not user.admin
    state = await user.get_auth_state()
    assert state["refresh_token"], "offline_access gives a refresh token"
    assert state["id_token"] and state["expires_at"]


async def test_manager_is_admin_and_member_groups(checkin_hub, browser_login):
    app = await checkin_hub()
    _, r = await browser_login("bob", "bob-pw")
    assert r.status_code == 200
    user = app.users["bob@egi.eu"]
    assert user.admin
    # manager implies member: both VOs become groups
    assert sorted(g.name for g in user.groups) == ["vo.example.eu", "vo.other.eu"]


async def test_outsider_sees_refusal_page(checkin_hub, browser_login):
    app = await checkin_hub()
    _, r = await browser_login("carol", "carol-pw")
    assert r.status_code == 403
    assert "vo.example.eu (role member)" in r.text
    assert ENROL_URL in r.text
    # carol's vo.example.eu entitlement comes from an untrusted authority: no account is made
    assert app.users.get("carol@egi.eu") is None


async def test_wrong_password_stays_at_provider(checkin_hub, browser_login):
    await checkin_hub()
    _, r = await browser_login("alice", "wrong")
    assert "Wrong username or password" in r.text


async def test_expired_token_refreshed_once_under_concurrency(checkin_hub, browser_login):
    app = await checkin_hub(refresh_margin=15)
    _, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200
    user = app.users["alice@egi.eu"]
    before = await user.get_auth_state()
    # the access token (20 s) is within the 15 s margin after ~5 s
    await asyncio.sleep(6)
    results = await asyncio.gather(*(app.authenticator.refresh_user(user) for _ in range(5)))
    assert all(results), "every concurrent caller got a usable auth model"
    after = await user.get_auth_state()
    assert after["access_token"] != before["access_token"]
    assert after["expires_at"] > before["expires_at"]
    # the provider rotates refresh tokens and revokes the grant when an old one is reused, so five
    # parallel refreshes only all succeed if exactly one of them spent the old token
    assert after["refresh_token"] != before["refresh_token"]


async def test_username_with_control_or_bidi_characters_is_refused(checkin_hub, browser_login, caplog):
    """Issue 11, item 6: `bob@egi.eu\\x00` became a hub user shown as "bob@egi.eu". The stand-in's accounts nul,
    esc and bidi have subjects that look like bob's but carry NUL, ESC or a right-to-left override."""
    from jupyterhub import orm
    app = await checkin_hub()
    for login, char in (("nul", "\x00"), ("esc", "\x1b"), ("bidi", "\u202e")):
        caplog.clear()
        _, r = await browser_login(login, f"{login}-pw")
        assert r.status_code == 403, (login, r.status_code)
        assert "invisible or control character" in r.text and f"U+{ord(char):04X}" in r.text
        assert f"U+{ord(char):04X}" in caplog.text and "Refusing a login" in caplog.text
        assert char not in caplog.text, "the log shows the name escaped"
    # no hub user was made for any of them
    assert [u.name for u in app.db.query(orm.User) if u.name.startswith("bob@egi.eu")] == []
    # the hub applies the same check to names an admin creates through its REST API
    import requests
    await browser_login("bob", "bob-pw")   # bob is admin (VO manager)
    token = app.users["bob@egi.eu"].new_api_token()
    api = f"http://127.0.0.1:{app.hub.port}{app.hub.base_url}api/users"
    h = {"Authorization": f"token {token}"}
    r = await asyncio.to_thread(requests.post, api, json={"usernames": ["bob@egi.eu\x00"]}, headers=h, timeout=30)
    assert r.status_code == 400, r.text
    r = await asyncio.to_thread(requests.post, api + "/bob@egi.eu%E2%80%AE", headers=h, timeout=30)
    assert r.status_code == 400, r.text
    assert [u.name for u in app.db.query(orm.User) if u.name.startswith("bob@egi.eu")] == ["bob@egi.eu"]
    assert not app.authenticator.validate_username("bob@egi.eu\x00")
    assert not app.authenticator.validate_username("bob@egi.eu\u2028x")
    assert app.authenticator.validate_username("bob@egi.eu") and app.authenticator.validate_username("a b")
