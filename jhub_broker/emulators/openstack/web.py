"""Shared HTTP plumbing: authentication, error bodies, request log (faults: ``faults.py``)."""
import asyncio
import json

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
    _after_fault = None  # a fault rule that replaces this request's answer once it is carried out

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

    def finish(self, chunk=None):
        if self.request.method not in ("GET", "HEAD") and getattr(self.cloud, "vm_runner", None) is not None:
            # groups, rules or ports may have changed: VMs enforce the new rules from the next connection
            self.cloud.vm_runner.refresh_ingress()
        rule, self._after_fault = self._after_fault, None
        if rule is None:
            return super().finish(chunk)
        # what the handler did stays done; what it would have answered is lost
        self._write_buffer = []
        self.cloud.faults.replace_answer(self, rule)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

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
