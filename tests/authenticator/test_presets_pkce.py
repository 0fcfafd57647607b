"""The Check-in presets, discovery, and PKCE as Check-in demands it (issue 11, item 14)."""
import asyncio
import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from jhub_broker.authenticator import CHECKIN_ISSUERS, CheckinAuthenticator
from jhub_broker.authenticator.entitlements import parse_entitlements

from .conftest import CLIENT_ID


def _authorize(checkin, hub_port, **extra):
    """An authorization request as a browser sends it for a client; the stand-in's answer (not followed)."""
    params = {"client_id": CLIENT_ID, "response_type": "code", "scope": "openid",
              "redirect_uri": f"http://127.0.0.1:{hub_port}/hub/oauth_callback", "state": "st", **extra}
    return requests.get(checkin.discovery["authorization_endpoint"], params=params, allow_redirects=False,
                        timeout=30)


def _error(resp):
    assert resp.status_code in (302, 303), resp.status_code
    return parse_qs(urlsplit(resp.headers["Location"]).query)


async def test_standin_refuses_authorization_without_pkce_or_with_plain(checkin, hub_port):
    q = _error(await asyncio.to_thread(_authorize, checkin, hub_port))
    assert q["error"] == ["invalid_request"] and "PKCE" in q["error_description"][0]
    verifier = secrets.token_urlsafe(48)
    q = _error(await asyncio.to_thread(_authorize, checkin, hub_port, code_challenge=verifier,
                                       code_challenge_method="plain"))
    assert q["error"] == ["invalid_request"], q
    # S256 is accepted: the browser goes on to the login page, not back with an error
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    r = await asyncio.to_thread(_authorize, checkin, hub_port, code_challenge=challenge,
                                code_challenge_method="S256")
    assert "/interaction/" in r.headers["Location"], r.headers["Location"]


async def test_the_hub_sends_an_s256_challenge(checkin_hub, hub_port):
    await checkin_hub()
    r = await asyncio.to_thread(requests.get, f"http://127.0.0.1:{hub_port}/hub/oauth_login",
                                allow_redirects=False, timeout=30)
    q = parse_qs(urlsplit(r.headers["Location"]).query)
    assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) >= 43


@pytest.mark.parametrize("env,host", [("production", "aai.egi.eu"), ("demo", "aai-demo.egi.eu"),
                                      ("development", "aai-dev.egi.eu")])
def test_presets_name_their_issuer_and_trust_only_its_memberships(env, host):
    a = CheckinAuthenticator(checkin_env=env, allowed_entitlements=["vo.example.eu"])
    assert a.issuer == f"https://{host}/auth/realms/egi" == CHECKIN_ISSUERS[env]
    assert a.oidc.issuer == a.issuer
    assert a.trusted_authorities == [host]
    for other in ("aai.egi.eu", "aai-demo.egi.eu", "aai-dev.egi.eu"):
        ents = parse_entitlements([f"urn:mace:egi.eu:group:vo.example.eu:role=member#{other}"])
        # a VO membership made on the demo or development instance never lets anyone into a production hub
        assert a.rules.decide(ents).allowed is (other == host), other
    assert bool(a.ineffective_settings()) is (env != "production")
    if env != "production":
        assert f"Check-in {env} instance" in a.ineffective_settings()[0]


def test_an_explicit_issuer_wins_and_trusts_every_checkin_authority():
    a = CheckinAuthenticator(checkin_env="demo", issuer="https://proxy.example.org/realms/x")
    assert a.issuer == "https://proxy.example.org/realms/x"
    assert sorted(a.trusted_authorities) == ["aai-demo.egi.eu", "aai-dev.egi.eu", "aai.egi.eu"]


async def test_discovery_fills_endpoints_and_explicit_ones_win(checkin):
    a = CheckinAuthenticator(issuer=checkin.issuer, token_url="http://127.0.0.1:9/explicit-token")
    await a.discover()
    assert a.authorize_url == checkin.discovery["authorization_endpoint"]
    assert a.userdata_url == checkin.discovery["userinfo_endpoint"]
    assert a.token_url == "http://127.0.0.1:9/explicit-token"
    # an issuer whose discovery document names another issuer is refused
    other = CheckinAuthenticator(issuer=checkin.issuer.replace("127.0.0.1", "localhost"))
    with pytest.raises(ValueError, match="discovery issuer"):
        await other.discover()
