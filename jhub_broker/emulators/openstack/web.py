"""Shared HTTP plumbing: authentication, error bodies, faults, request log."""
import asyncio
import json
import re

from tornado import web

# Nova and Cinder wrap errors in an object named after the fault.
_NOVA_FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
                     405: "HTTPMethodNotAllowed", 409: "conflictingRequest", 413: "overLimit",
                     429: "overLimit", 500: "computeFault", 501: "notImplemented", 503: "serviceUnavailable"}
_NEUTRON_TYPES = {400: "HTTPBadRequest", 401: "HTTPUnauthorized", 403: "HTTPForbidden", 404: "HTTPNotFound",
                  409: "Conflict", 413: "OverQuota", 429: "OverLimit", 500: "HTTPInternalServerError",
                  503: "HTTPServiceUnavailable"}
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Request Entity Too Large", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


class APIError(web.HTTPError):
    """An error answered in the calling service's own error format."""

    def __init__(self, status, message, kind=None, headers=None):
        super().__init__(status, reason=_TITLES.get(status))
        self.message = message
        self.kind = kind
        self.headers = headers or {}


class BaseHandler(web.RequestHandler):
    """Base of every API handler.  ``service`` picks the error format."""

    service = "identity"
    requires_auth = True

    def initialize(self, cloud):
        self.cloud = cloud

    # tornado calls this for every method; unknown methods end up in write_error
    async def prepare(self):
        self.cloud.request_log.append((self.request.method, self.request.path))
        if self.cloud.faults is not None:
            await self.cloud.faults.apply(self)
        self.token = None
        if self.requires_auth:
            info = self.cloud.check_token(self.request.headers.get("X-Auth-Token"))
            if info is None:
                raise APIError(401, "The request you have made requires authentication.", kind="Unauthorized")
            self.token = info

    @property
    def project_id(self):
        return self.token["project"]["id"]

    @property
    def is_admin(self):
        return bool(self.token) and "admin" in self.token["roles"]

    def body(self):
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise APIError(400, "Malformed request body")
        if not isinstance(data, dict):
            raise APIError(400, "Malformed request body: expected a JSON object")
        return data

    def send(self, data, status=200, headers=None):
        self.set_status(status)
        for k, v in (headers or {}).items():
            self.set_header(k, v)
        if data is None:
            self.finish()
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def set_default_headers(self):
        self.set_header("Server", "jhub-broker-cloud")
        self.set_header("X-Openstack-Request-Id", "req-" + __import__("uuid").uuid4().hex)

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "message", None) or _TITLES.get(status_code, "Error")
        kind = getattr(exc, "kind", None)
        for k, v in getattr(exc, "headers", {}).items():
            self.set_header(k, v)
        if status_code == 405:
            message = f"The method {self.request.method} is not supported for this resource."
        self.clear_header("Content-Type")
        service = self.service
        if service in ("compute", "volume"):
            if status_code == 401:
                body = {"error": {"code": 401, "title": "Unauthorized", "message": message}}
            else:
                name = kind if kind and service == "compute" and kind[0].islower() else _NOVA_FAULT_NAMES.get(status_code, "computeFault")
                body = {name: {"code": status_code, "message": message}}
                if status_code in (413, 429):
                    body[name]["retryAfter"] = str(getattr(exc, "headers", {}).get("Retry-After", "0"))
        elif service == "network":
            body = {"NeutronError": {"type": kind or _NEUTRON_TYPES.get(status_code, "HTTPError"),
                                     "message": message, "detail": ""}}
        elif service == "image":
            title = f"{status_code} {_TITLES.get(status_code, 'Error')}"
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.finish(f"<html>\n <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n  "
                        f"{web.escape.xhtml_escape(message)}<br /><br />\n\n\n\n </body>\n</html>")
            return
        else:
            body = {"error": {"code": status_code, "message": message,
                              "title": kind or _TITLES.get(status_code, "Error")}}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class NotFoundHandler(BaseHandler):
    """Unknown URLs answer 404 in the format of the service they fall under."""

    requires_auth = False

    def initialize(self, cloud, service="identity"):
        self.cloud = cloud
        self.service = service

    async def prepare(self):
        await super().prepare()
        raise APIError(404, "The resource could not be found.")


class Faults:
    """Injected faults: latency, error responses and rate limiting, per route.

    A rule is a dict: ``path`` (regex searched in the request path), optional
    ``method`` and ``service``, ``latency`` (seconds), ``status`` (500, 503,
    429...), ``rate`` (0..1, fraction of matching requests that fail; default 1),
    ``count`` (how many times it may fire; default unlimited), ``retry_after``
    (seconds, for 429/413/503).  Rules come from the cloud's config file and
    the admin-only ``/_emulator/faults`` endpoint.
    """

    def __init__(self, rules=None, seed=1234):
        import random
        self.random = random.Random(seed)
        self.rules = []
        self.fired = 0
        for r in rules or []:
            self.add(r)

    def add(self, rule):
        rule = dict(rule)
        if "path" in rule:
            re.compile(rule["path"])
        if "status" in rule and int(rule["status"]) not in (400, 401, 403, 404, 409, 413, 429, 500, 502, 503, 504):
            raise ValueError(f"unsupported fault status {rule['status']}")
        rule.setdefault("rate", 1.0)
        rule["_fired"] = 0
        self.rules.append(rule)
        return rule

    def clear(self):
        self.rules = []

    def public(self):
        return [{k: v for k, v in r.items() if not k.startswith("_")} | {"fired": r["_fired"]} for r in self.rules]

    async def apply(self, handler):
        path = handler.request.path
        if path.startswith("/_emulator"):
            return
        for rule in self.rules:
            if rule.get("method") and rule["method"].upper() != handler.request.method:
                continue
            if rule.get("service") and rule["service"] != handler.service:
                continue
            if rule.get("path") and not re.search(rule["path"], path):
                continue
            if rule.get("count") is not None and rule["_fired"] >= int(rule["count"]):
                continue
            if self.random.random() >= float(rule["rate"]):
                continue
            rule["_fired"] += 1
            self.fired += 1
            if rule.get("latency"):
                await asyncio.sleep(float(rule["latency"]))
            status = rule.get("status")
            if status:
                status = int(status)
                headers = {}
                if status in (413, 429, 503) and rule.get("retry_after") is not None:
                    headers["Retry-After"] = str(rule["retry_after"])
                message = rule.get("message") or {
                    429: "This request was rate-limited.",
                    503: "The server is currently unavailable. Please try again at a later time.",
                    500: "An unexpected error prevented the server from fulfilling your request.",
                }.get(status, _TITLES.get(status, "Error"))
                raise APIError(status, message, headers=headers)
