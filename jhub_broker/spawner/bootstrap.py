"""One-time bootstrap secrets: how a VM gets the hub's API token without it sitting in user_data.

user_data carries only a random secret and the hub's URL.  At boot the VM
posts the secret to ``/hub/api/jhub-broker/bootstrap`` once and receives the
notebook server's environment (API token included) and TLS material; the
secret is then spent, so the copy that stays readable in the metadata service
and ``/var/lib/cloud`` for the VM's life is worthless.  An unredeemed secret
expires with the spawn's start timeout.

A payload can be issued *held* while the spawner still has to add to it (the
notebook's certificate, signed once the VM's address is known): redeeming a held
secret answers 503 with ``Retry-After`` and does not spend it.
"""
import hashlib
import hmac
import json
import logging
import secrets
import time

from tornado import web

log = logging.getLogger("jhub_broker.spawner.bootstrap")

ROUTE = "api/jhub-broker/bootstrap"
# a request carries one secret of 43 characters: anything much larger is not a bootstrap request
MAX_BODY = 4096


def _digest(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


HELD = object()


class BootstrapRegistry:
    """Secrets waiting to be redeemed, kept as digests only."""

    def __init__(self):
        self._entries = {}

    def issue(self, owner, payload, ttl, held=False):
        self.revoke(owner)
        secret = secrets.token_urlsafe(32)
        self._entries[_digest(secret)] = {"owner": owner, "payload": payload, "held": held,
                                          "expires": time.monotonic() + ttl}
        return secret

    def release(self, owner, **changes):
        """Complete a held payload with ``changes``; from now on the secret can be redeemed."""
        self.update(owner, **changes)
        for entry in self._entries.values():
            if entry["owner"] == owner:
                entry["held"] = False

    def update(self, owner, **changes):
        for entry in self._entries.values():
            if entry["owner"] == owner:
                entry["payload"].update(changes)

    def redeem(self, secret):
        """The entry of ``secret``, now spent; ``HELD`` if its payload is not complete yet; None if unknown."""
        self._expire()
        digest = _digest(secret or "")
        for key in list(self._entries):
            if hmac.compare_digest(key, digest):
                if self._entries[key].get("held"):
                    return HELD
                return self._entries.pop(key)
        return None

    def revoke(self, owner):
        for key, entry in list(self._entries.items()):
            if entry["owner"] == owner:
                del self._entries[key]

    def pending(self, owner):
        return any(e["owner"] == owner for e in self._entries.values())

    def _expire(self):
        now = time.monotonic()
        for key, entry in list(self._entries.items()):
            if entry["expires"] < now:
                del self._entries[key]


registry = BootstrapRegistry()


class BootstrapHandler(web.RequestHandler):
    """``POST /hub/api/jhub-broker/bootstrap`` with ``{"secret": ...}``."""

    def check_xsrf_cookie(self):
        # no cookies are involved: the one-time secret is the credential
        return

    def _secret(self):
        """The secret of a well-formed request; anything else is answered 400 saying what to send."""
        body = self.request.body or b""
        if len(body) > MAX_BODY:
            raise web.HTTPError(400, f"the request body is too large: send only {{\"secret\": \"...\"}} "
                                     f"(at most {MAX_BODY} bytes)")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
            raise web.HTTPError(400, 'the request body must be the JSON object {"secret": "..."}') from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, 'the request body must be the JSON object {"secret": "..."}')
        secret = data.get("secret")
        if not isinstance(secret, str) or not secret:
            raise web.HTTPError(400, '"secret" must be a non-empty string')
        return secret

    def post(self):
        entry = registry.redeem(self._secret())
        if entry is HELD:
            # not an error page: send_error would drop the Retry-After header
            self.set_status(503)
            self.set_header("Retry-After", "1")
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"status": 503, "message": "the server's settings are not ready yet, retry"}))
            return
        if entry is None:
            log.warning("refused a bootstrap request from %s: unknown, spent or expired secret",
                        self.request.remote_ip)
            raise web.HTTPError(403, "unknown, spent or expired bootstrap secret")
        log.info("bootstrap secret of %s redeemed from %s", entry["owner"], self.request.remote_ip)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(entry["payload"]))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        # the HTTPError's own words (what to fix); never an unexpected exception's
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))


def ensure_registered(log=log):
    """Add the bootstrap route to the running hub, once.

    Works with a plain ``spawner_class = "openstack"``: the handler is added to
    the hub's tornado application at the first spawn.
    """
    from jupyterhub.app import JupyterHub
    from jupyterhub.utils import url_path_join

    if not JupyterHub.initialized():
        raise RuntimeError("OpenStackSpawner needs to run inside a JupyterHub process")
    app = JupyterHub.instance()
    tornado_app = app.tornado_application
    if getattr(tornado_app, "_jhub_broker_bootstrap", False):
        return
    pattern = url_path_join(app.hub_prefix, ROUTE)
    tornado_app.add_handlers(".*$", [(pattern, BootstrapHandler)])
    tornado_app._jhub_broker_bootstrap = True
    log.info("bootstrap route registered at %s", pattern)
