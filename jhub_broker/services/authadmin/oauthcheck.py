"""Test an OAuth/OIDC configuration before switching to it: discovery, then the client at the token endpoint."""
import base64
import json
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest


def _step(steps, name, ok, detail):
    steps.append({"step": name, "ok": ok, "detail": detail})
    return ok


async def check_oauth(issuer, client_id, client_secret, validate_cert=True, timeout=15):
    """Returns ``{"ok", "steps": [{"step", "ok", "detail"}]}``; never echoes the secret."""
    steps = []
    client = AsyncHTTPClient()
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        r = await client.fetch(HTTPRequest(url, request_timeout=timeout, validate_cert=validate_cert),
                               raise_error=False)
    except OSError as e:
        _step(steps, "discovery", False, f"{url} is not reachable: {e}")
        return {"ok": False, "steps": steps}
    meta = None
    if r.code == 200:
        try:
            meta = json.loads(r.body)
        except ValueError:
            pass
    if not isinstance(meta, dict):
        _step(steps, "discovery", False, f"{url} answered {r.code}, not an OpenID configuration.")
        return {"ok": False, "steps": steps}
    missing = [k for k in ("issuer", "authorization_endpoint", "token_endpoint") if not meta.get(k)]
    if missing:
        _step(steps, "discovery", False, f"the discovery document lacks {', '.join(missing)}.")
        return {"ok": False, "steps": steps}
    same = meta["issuer"].rstrip("/") == issuer.rstrip("/")
    _step(steps, "discovery", same, f"issuer {meta['issuer']}, token endpoint {meta['token_endpoint']}"
          + ("" if same else f" — the document names another issuer than {issuer}"))
    if not same:
        return {"ok": False, "steps": steps}
    # The client credentials at the token endpoint: a client grant for this client either succeeds or the
    # server says the client is known but may not use that grant; a wrong id or secret gives invalid_client.
    basic = base64.b64encode(f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()).decode()
    try:
        t = await client.fetch(HTTPRequest(
            meta["token_endpoint"], method="POST", request_timeout=timeout, validate_cert=validate_cert,
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded",
                     "Accept": "application/json"},
            body=urlencode({"grant_type": "client_credentials", "scope": "openid"})), raise_error=False)
    except OSError as e:
        _step(steps, "token endpoint", False, f"not reachable: {e}")
        return {"ok": False, "steps": steps}
    try:
        err = json.loads(t.body).get("error", "") if t.body else ""
    except (ValueError, AttributeError):
        err = ""
    if t.code == 200:
        _step(steps, "client credentials", True, "accepted (a client-credentials token was issued).")
    elif err in ("unauthorized_client", "unsupported_grant_type", "invalid_scope", "invalid_grant"):
        _step(steps, "client credentials", True, f"the client is known to the issuer ({err} for a test grant).")
    elif err == "invalid_client" or t.code == 401:
        _step(steps, "client credentials", False, "the issuer refused this client id / secret (invalid_client).")
    else:
        _step(steps, "client credentials", None,
              f"token endpoint reachable (HTTP {t.code} {err}); the secret could not be confirmed.")
    return {"ok": all(s["ok"] is not False for s in steps), "steps": steps}
