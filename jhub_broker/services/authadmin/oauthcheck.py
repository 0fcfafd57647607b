"""Test an OAuth/OIDC configuration before switching to it, with the requests the hub itself makes at login.

Steps (each ``{"step", "ok", "detail"}``; ``ok`` is True, False, or None when the answer cannot tell):

1. **discovery**: ``<issuer>/.well-known/openid-configuration`` is an OpenID configuration for this issuer;
2. **signing keys**: its ``jwks_uri`` serves keys (the hub verifies id_tokens with them);
3. **client id and callback URL**: the authorization endpoint, asked as the browser is at login
   (``response_type=code`` with the callback URL), sends the browser on to a login page instead of showing an
   error page: providers refuse unknown client ids and unregistered redirect URIs right there;
4. **client secret**: the token endpoint, asked as the hub asks after login (``authorization_code`` grant,
   client id and secret in the form body, the callback URL) but with a code that cannot exist. Providers
   authenticate the client before they look at the code, so ``invalid_client`` (or HTTP 401) means the
   id/secret pair is wrong, ``invalid_grant`` means it is right, ``unauthorized_client`` means the client may
   not use the authorization-code grant the hub logs in with.

No token is ever issued and nothing is followed blindly (no redirects on the login and token requests).
Every request has a timeout. The secret goes only into the token request's body; whatever a provider answers
is scrubbed of it before it reaches a result.
"""
import json
import re
import secrets
import socket
import ssl
from urllib.parse import parse_qs, quote, quote_plus, urlencode, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest



LOOPBACK = ("localhost", "::1")


def _step(steps, name, ok, detail):
    steps.append({"step": name, "ok": ok, "detail": detail})
    return ok


class _Scrub:
    """Makes provider text safe to show: no secret (in any encoding), one short printable line."""

    def __init__(self, secret):
        self.forms = sorted({s for s in (secret, quote(secret, safe=""), quote_plus(secret)) if s},
                            key=len, reverse=True)

    def __call__(self, text, limit=300):
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        for s in self.forms:
            text = text.replace(s, "•••")
        text = re.sub(r"\s+", " ", re.sub(r"[^\x20-\x7e\u00a0-\uffff]", " ", text)).strip()
        return text[:limit] + ("…" if len(text) > limit else "")


def _why(e):
    """What went wrong with a connection, in words an admin can act on."""
    if isinstance(e, HTTPClientError):  # tornado's own: timeouts (599), closed streams
        return "no answer in time" if e.code == 599 and "imeout" in str(e) else f"{e}"
    if isinstance(e, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(e, ssl.SSLError):
        return f"TLS failed ({getattr(e, 'reason', None) or e})"
    return f"{type(e).__name__}: {e}"


def _json(body):
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def check_oauth(issuer, client_id, client_secret, redirect_uri="", validate_cert=True, timeout=10,
                      strict_issuer=True):
    """``{"ok", "summary", "steps": [{"step", "ok", "detail"}]}``; never echoes the secret.

    ``strict_issuer``: the discovery document must name ``issuer`` (the hub checks id_tokens' ``iss``);
    off for providers whose document names a canonical issuer other than the configured URL (Azure AD with
    a domain instead of the tenant id)."""
    steps = []
    scrub = _Scrub(client_secret or "")
    client = AsyncHTTPClient()

    async def fetch(url, **kw):
        """(response, None) or (None, why it failed)."""
        try:
            req = HTTPRequest(url, request_timeout=timeout, connect_timeout=timeout, validate_cert=validate_cert,
                              **kw)
            return await client.fetch(req, raise_error=False), None
        except (OSError, HTTPClientError, ValueError) as e:
            return None, scrub(_why(e))

    def done():
        failed = [s["step"] for s in steps if s["ok"] is False]
        unsure = [s["step"] for s in steps if s["ok"] is None]
        if failed:
            summary = f"Not usable: {', '.join(failed)} failed (see below)."
        elif unsure:
            summary = (f"No check failed, but {', '.join(unsure)} could not be confirmed: try a login after "
                       "switching (the previous method comes back if the hub does not start).")
        else:
            summary = (f"The issuer knows client {client_id}, accepts its callback URL and its secret: the hub "
                       "can log in with these settings.")
        return {"ok": not failed, "summary": summary, "steps": steps}  # provider text in steps is scrubbed

    issuer = (issuer or "").strip()
    if not re.match(r"^https?://[^\s/]+", issuer):
        _step(steps, "discovery", False, f"the issuer {scrub(issuer)!r} is not an http(s) URL: set the issuer URL.")
        return done()
    # 1. discovery
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    r, err = await fetch(url, follow_redirects=True, max_redirects=3)
    if r is None:
        _step(steps, "discovery", False, f"{url} is not reachable: {err}. Check the issuer URL (and that this "
                                         "server may reach it: firewall, proxy).")
        return done()
    meta = _json(r.body) if r.code == 200 else None
    if meta is None:
        _step(steps, "discovery", False, f"{url} answered HTTP {r.code}, not an OpenID configuration: the issuer "
                                         "URL is wrong (it is the part before /.well-known/openid-configuration).")
        return done()
    missing = [k for k in ("issuer", "authorization_endpoint", "token_endpoint") if not isinstance(meta.get(k), str)]
    if missing:
        _step(steps, "discovery", False, f"the discovery document at {url} lacks {', '.join(missing)}: this issuer "
                                         "cannot be used for an OAuth login.")
        return done()
    named = meta["issuer"].rstrip("/")
    same = named == issuer.rstrip("/")
    if same or not strict_issuer:
        _step(steps, "discovery", True, f"issuer {scrub(named)}, token endpoint {scrub(meta['token_endpoint'])}"
              + ("" if same else f" (the document names {scrub(named)})"))
    else:
        _step(steps, "discovery", False, f"the document at {url} names the issuer {scrub(named)}, not {issuer}: "
                                         f"set the issuer URL to {scrub(named)}.")
        return done()

    # 2. signing keys
    if isinstance(meta.get("jwks_uri"), str):
        k, err = await fetch(meta["jwks_uri"], follow_redirects=True, max_redirects=3)
        keys = (_json(k.body) or {}).get("keys") if k is not None and k.code == 200 else None
        if isinstance(keys, list) and keys:
            _step(steps, "signing keys", True, f"{len(keys)} key(s) at {scrub(meta['jwks_uri'])}.")
        else:
            _step(steps, "signing keys", False, f"{scrub(meta['jwks_uri'])} serves no keys "
                  f"({err or f'HTTP {k.code}'}): the hub could not verify the issuer's id_tokens.")
    else:
        _step(steps, "signing keys", None, "the discovery document names no jwks_uri.")

    # 3. the authorization endpoint: client id and callback URL, as the browser asks at login
    client_known = None
    if not redirect_uri:
        _step(steps, "client id and callback URL", None, "no callback URL given: not checked.")
    else:
        sep = "&" if "?" in meta["authorization_endpoint"] else "?"
        auth_url = meta["authorization_endpoint"] + sep + urlencode({
            "client_id": client_id, "response_type": "code", "redirect_uri": redirect_uri, "scope": "openid",
            "state": secrets.token_urlsafe(12),
            # with PKCE, as the hub asks: Check-in refuses an authorization request without it
            "code_challenge": secrets.token_urlsafe(32), "code_challenge_method": "S256"})
        a, err = await fetch(auth_url, follow_redirects=False, headers={"Accept": "text/html"})
        if a is None:
            _step(steps, "client id and callback URL", False,
                  f"the authorization endpoint {scrub(meta['authorization_endpoint'])} is not reachable: {err}.")
        elif 300 <= a.code < 400 and a.headers.get("Location"):
            where = a.headers["Location"]
            back = where.split("?")[0].split("#")[0] == redirect_uri.split("?")[0]
            q = parse_qs(urlsplit(where).query or urlsplit(where).fragment)
            error = scrub((q.get("error") or [""])[0], 60) if back else ""
            desc = scrub((q.get("error_description") or [""])[0], 200)
            client_known = True
            if not error:
                _step(steps, "client id and callback URL", True,
                      f"client {client_id} is known and {redirect_uri} is one of its redirect URIs (the issuer "
                      "sent the browser on to its login page).")
            elif error in ("unauthorized_client", "unsupported_response_type") or (
                    "response_type" in desc and "not allowed" in desc):
                _step(steps, "client id and callback URL", False,
                      f"client {client_id} and the callback URL are registered, but the issuer refuses the "
                      f"authorization-code flow for this client ({error}{': ' + desc if desc else ''}): enable "
                      "the standard (authorization code) flow for the client at the issuer.")
            else:
                _step(steps, "client id and callback URL", None,
                      f"client {client_id} and the callback URL are registered (the issuer sent the browser back "
                      f"to it), but with the error {error}{': ' + desc if desc else ''} for the test request.")
        elif a.code >= 400:
            text = scrub(re.sub(r"<[^>]+>", " ", a.body.decode("utf-8", "replace")), 2000) if a.body else ""
            low = text.lower()
            if "redirect" in low and ("uri" in low or "url" in low):
                client_known = True
                _step(steps, "client id and callback URL", False,
                      f"the issuer does not accept the callback URL {redirect_uri} for client {client_id}: add it "
                      "to the client's redirect URIs at the issuer, or correct the callback URL here "
                      "(https://<hub>/hub/oauth_callback).")
            elif "client" in low and any(w in low for w in ("not found", "invalid", "unknown")):
                client_known = False
                _step(steps, "client id and callback URL", False,
                      f"the issuer does not know the client id {client_id}: copy the client id exactly as the "
                      "issuer shows it for your registered client.")
            else:
                _step(steps, "client id and callback URL", False,
                      f"the authorization endpoint refused the login request for client {client_id} with "
                      f"callback URL {redirect_uri} (HTTP {a.code}{': ' + scrub(text, 200) if text else ''}): "
                      "check the client id and that the callback URL is registered for the client.")
        else:
            _step(steps, "client id and callback URL", None,
                  f"the authorization endpoint answered HTTP {a.code} with a page: open the issuer's login to see "
                  "whether it is a login page or an error.")

    # 4. the token endpoint: the secret, as the hub sends it (client_secret_post) with a code that cannot exist
    token_url = urlsplit(meta["token_endpoint"])
    if token_url.scheme != "https" and (token_url.hostname or "") not in LOOPBACK \
            and not (token_url.hostname or "").startswith("127."):
        _step(steps, "client secret", False, f"not sent: the token endpoint {scrub(meta['token_endpoint'])} is not "
                                             "HTTPS, so the secret would cross the network in clear (the hub's "
                                             "logins too). Use the issuer's https URL.")
        return done()
    body = {"grant_type": "authorization_code", "code": "jhub-broker-test-" + secrets.token_urlsafe(24),
            "client_id": client_id, "client_secret": client_secret}
    if redirect_uri:
        body["redirect_uri"] = redirect_uri
    t, err = await fetch(meta["token_endpoint"], method="POST", body=urlencode(body), follow_redirects=False,
                         headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
    if t is None:
        _step(steps, "client secret", False, f"the token endpoint {scrub(meta['token_endpoint'])} is not reachable: "
                                             f"{err}.")
        return done()
    answer = _json(t.body) or {}
    error = answer.get("error", "") if isinstance(answer.get("error", ""), str) else ""
    said = scrub(answer.get("error_description", ""), 200) if isinstance(answer.get("error_description"), str) \
        else ""
    said = f" (the issuer says: {said})" if said else ""
    if t.code == 401 or error == "invalid_client":
        if client_known is False:
            what = f"the client id {client_id} is unknown to the issuer (see above), so its secret cannot be checked"
        elif client_known:
            what = (f"client {client_id} exists but the secret is wrong: copy the client's current secret from "
                    "the issuer's client settings")
        else:
            what = (f"the client id {client_id} or its secret is wrong: check both against the client registered "
                    "at the issuer")
        _step(steps, "client secret", False, f"the token endpoint refused the client (invalid_client){said}: "
                                             f"{what}.")
    elif error == "unauthorized_client" or (error == "invalid_request" and "grant" in said and "not allowed" in said):
        _step(steps, "client secret", False,
              f"client {client_id} and its secret are accepted, but the client may not use the authorization-code "
              f"grant the hub logs in with{said}: enable it for the client at the issuer.")
    elif error == "invalid_grant":  # only after the client authenticated
        _step(steps, "client secret", True,
              f"the token endpoint authenticated client {client_id} with this secret (it then refused the test "
              f"code: {scrub(error)}, as expected).")
    elif t.code == 200:
        _step(steps, "client secret", None, "the token endpoint accepted a code that cannot exist: this issuer "
                                            "does not behave like an OAuth server.")
    else:
        _step(steps, "client secret", None,
              f"the token endpoint answered HTTP {t.code} {scrub(error)}{said}: the secret could not be confirmed.")
    return done()
