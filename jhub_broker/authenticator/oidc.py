"""OIDC discovery and id_token verification against the issuer's JWKS (async, cached by kid)."""
import asyncio
import json
import time

import jwt
from tornado.httpclient import AsyncHTTPClient


class OIDCIssuer:
    """Discovery document and signing keys of one issuer, fetched with tornado."""

    def __init__(self, issuer, http_client=None, validate_cert=True):
        self.issuer = issuer.rstrip("/")
        self.http = http_client or AsyncHTTPClient()
        self.validate_cert = validate_cert
        self.metadata = None
        self._keys = {}
        self._keys_fetched = 0.0
        self._lock = asyncio.Lock()

    async def _get_json(self, url):
        resp = await self.http.fetch(url, validate_cert=self.validate_cert, request_timeout=20)
        return json.loads(resp.body)

    async def discover(self):
        async with self._lock:
            if self.metadata is None:
                meta = await self._get_json(self.issuer + "/.well-known/openid-configuration")
                if meta.get("issuer", "").rstrip("/") != self.issuer:
                    raise ValueError(f"discovery issuer {meta.get('issuer')!r} != {self.issuer!r}")
                self.metadata = meta
        return self.metadata

    async def key_for(self, kid):
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            # refetch at most every 10 s so a bogus kid cannot hammer the issuer
            if kid not in self._keys and time.monotonic() - self._keys_fetched > 10:
                meta = self.metadata or {}
                jwks = await self._get_json(meta["jwks_uri"])
                self._keys = {k.get("kid"): jwt.PyJWK(k) for k in jwks.get("keys", [])
                              if k.get("use", "sig") == "sig"}
                self._keys_fetched = time.monotonic()
        if kid not in self._keys:
            raise jwt.InvalidTokenError(f"unknown signing key id {kid!r}")
        return self._keys[kid]

    async def verify_id_token(self, id_token, client_id, leeway=30):
        """The verified claims of an id_token; raises jwt.InvalidTokenError."""
        await self.discover()
        header = jwt.get_unverified_header(id_token)
        if header.get("alg", "none") in ("none", "HS256", "HS384", "HS512"):
            raise jwt.InvalidTokenError(f"refusing id_token alg {header.get('alg')!r}")
        key = await self.key_for(header.get("kid"))
        return jwt.decode(id_token, key=key.key, algorithms=[header["alg"]], audience=client_id,
                          issuer=self.metadata["issuer"], leeway=leeway,
                          options={"require": ["exp", "iat", "iss", "aud", "sub"]})
