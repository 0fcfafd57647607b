"""The hub's REST API as the broker service (its token needs ``admin:users``, ``list:users``, ``read:users``;
granting the admin flag needs the hub's ``admin`` role, see :func:`jhub_broker.services.config.service_config`)."""
import json
import os
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


class HubAPIError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class HubAPI:
    def __init__(self, api_url=None, token=None):
        self.api_url = (api_url or os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")).rstrip("/")
        self.token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")

    async def _call(self, method, path, body=None, ok=(200, 201, 204)):
        req = HTTPRequest(self.api_url + path, method=method,
                          headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
                          body=json.dumps(body) if body is not None else (None if method in ("GET", "DELETE")
                                                                           else "{}"),
                          request_timeout=30, allow_nonstandard_methods=True)
        try:
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        except (OSError, HTTPClientError) as e:
            raise HubAPIError(502, f"The hub API is not reachable: {e}") from None
        if resp.code not in ok:
            try:
                msg = json.loads(resp.body).get("message", "")
            except ValueError:
                msg = resp.body[:200].decode("utf-8", "replace")
            raise HubAPIError(resp.code, f"hub API {method} {path}: {resp.code} {msg}")
        return json.loads(resp.body) if resp.body else None

    async def users(self):
        """[{name, admin}] of every hub user (paginated API)."""
        out, offset = [], 0
        while True:
            page = await self._call("GET", f"/users?offset={offset}&limit=200&include_stopped_servers=0")
            items = page["items"] if isinstance(page, dict) else page
            out += [{"name": u["name"], "admin": bool(u.get("admin"))} for u in items]
            if not isinstance(page, dict) or not page.get("_pagination", {}).get("next"):
                return out
            offset = page["_pagination"]["next"]["offset"]

    async def user(self, name):
        try:
            return await self._call("GET", f"/users/{quote(name, safe='')}")
        except HubAPIError as e:
            if e.status == 404:
                return None
            raise

    async def ensure_user(self, name, admin=None):
        u = await self.user(name)
        if u is None:
            await self._call("POST", f"/users/{quote(name, safe='')}", body={"admin": bool(admin)} if admin else {})
        elif admin is not None and bool(u.get("admin")) != bool(admin):
            await self.set_admin(name, admin)

    async def set_admin(self, name, admin):
        await self._call("PATCH", f"/users/{quote(name, safe='')}", body={"admin": bool(admin)})

    async def delete_user(self, name):
        try:
            await self._call("DELETE", f"/users/{quote(name, safe='')}")
        except HubAPIError as e:
            if e.status != 404:
                raise
