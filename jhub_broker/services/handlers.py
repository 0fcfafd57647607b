"""Tornado handlers: the REST API (JSON, token or OAuth cookie) and the pages (Jinja2, xsrf)."""
import asyncio
import json
import re

from jupyterhub.services.auth import HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from . import scopes
from .db import Build
from .environments.manager import Conflict, NotFound
from .environments.validation import ValidationError, shown, validate_env_name
from .models import action_model, build_model, env_model

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    api = True

    @property
    def manager(self):
        return self.settings["manager"]

    @property
    def prefix(self):
        return self.settings["service_prefix"]

    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy",
                        "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'self'")
        self.set_header("Referrer-Policy", "same-origin")

    def check_xsrf_cookie(self):
        # Tornado checks XSRF before the handler runs, so resolve the caller first: only a request a token
        # actually authenticated skips the check (browsers never attach a token to a cross-site request). A bogus
        # Authorization header next to the session cookie authenticates nothing and must not switch it off.
        # While HubAuth resolves the cookie it calls back here (``_cached_hub_user`` is then already set).
        if not hasattr(self, "_cached_hub_user"):
            self.current_user  # noqa: B018 - sets _token_authenticated when a token authenticated the request
        if self.token_auth:
            return
        return super().check_xsrf_cookie()

    # -- who may do what --
    def hub_user(self):
        """The caller's hub user model; without one, a page GET goes to the hub's login and anything else is 403."""
        user = self.current_user
        if user is None:
            if not self.api and self.request.method == "GET":
                self.redirect(self.get_login_url())
                raise web.Finish()
            raise web.HTTPError(403, "Not authenticated with the hub.")
        return user

    def require(self, what):
        user = self.hub_user()
        ok = scopes.can_manage(user) if what == "manage" else scopes.can_view(user)
        if not ok:
            need = scopes.MANAGE if what == "manage" else scopes.VIEW
            raise web.HTTPError(403, f"{user.get('name')} lacks the {need} scope.")
        return user

    @property
    def is_form(self):
        return self.request.headers.get("Content-Type", "").startswith(FORM_TYPES)

    @property
    def token_auth(self):
        """True when a token (header or URL), not the cookie session, authenticated this request."""
        return bool(getattr(self, "_token_authenticated", False))

    @property
    def from_page(self):
        """A browser form post (cookie session): answer with a redirect or an HTML error, not JSON."""
        return self.is_form and not self.token_auth

    def body(self):
        """The request body as a dict: JSON for the API, form fields for pages."""
        if self.is_form:
            data = {k: [v.decode("utf-8", "replace") for v in vals] for k, vals in self.request.body_arguments.items()}
            return {k: (v[0] if len(v) == 1 else v) for k, v in data.items() if k != "_xsrf"}
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "Request body must be JSON.")
        except RecursionError:  # the parser hit its own limit: no body the service takes nests deeply
            raise web.HTTPError(400, "Request body is nested too deeply: send a flat JSON object.")
        if not isinstance(data, dict):
            raise web.HTTPError(400, "Request body must be a JSON object.")
        return data

    def env_name(self, name):
        try:
            return validate_env_name(name)
        except ValidationError as e:
            raise web.HTTPError(400, str(e))

    def done(self, payload, status=200, page=None):
        """Answer a mutating request: JSON for the API, a redirect for a page form."""
        if self.from_page:
            self.redirect(page or url_path_join(self.prefix, ""))
            return
        self.set_status(status)
        self.write_json(payload)

    def write_json(self, payload):
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(payload))

    def env_page(self, name):
        return url_path_join(self.prefix, "environments", name)

    def http_error(self, e):
        """The HTTPError an expected (domain) error is answered with; None for any other exception."""
        if isinstance(e, ValidationError):
            return web.HTTPError(400, "domain error")
        if isinstance(e, Conflict):
            return web.HTTPError(409, "domain error")
        if isinstance(e, NotFound):
            return web.HTTPError(404, "domain error")
        return None

    def log_exception(self, typ, value, tb):
        if self.http_error(value) is None:  # expected errors are answered, not logged
            super().log_exception(typ, value, tb)

    def write_error(self, status_code, **kwargs):
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, (ValidationError, Conflict, NotFound)):
            message = str(exc)
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        message = _cap(message)
        if self.api and not self.from_page:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(json.dumps({"status": status_code, "message": message}))
        else:
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            # the navigation needs the caller; never start authenticating while answering an error
            user = getattr(self, "_hub_auth_user_cache", None)
            self.finish(self.settings["render"]("error.html", handler=self, status=status_code, message=message,
                                                user=user, can_manage=scopes.can_manage(user)))

    def _handle_request_exception(self, e):
        # domain errors get their HTTP status; write_error shows the message the user should see
        return super()._handle_request_exception(self.http_error(e) or e)


MESSAGE_MAX = 1000


def _cap(message):
    """An error message as answered: at most MESSAGE_MAX characters, so a huge input is never echoed back."""
    message = str(message or "")
    return message if len(message) <= MESSAGE_MAX else message[:MESSAGE_MAX - 30] + " … (message shortened)"


class HealthHandler(web.RequestHandler):
    def get(self):
        self.finish({"status": "ok"})


class MeHandler(BaseHandler):
    def get(self):
        user = self.require("view")
        self.write_json({"name": user["name"], "can_manage": scopes.can_manage(user), "can_view": True})


class EnvironmentsHandler(BaseHandler):
    def get(self):
        self.require("view")
        m = self.manager
        self.write_json({"environments": [env_model(m, e, builds=False) for e in m.list_envs()],
                         "pythons": sorted(m.pythons), "installer": m.installer})

    def post(self):
        user = self.require("manage")
        d = self.body()
        reqs = d.get("requirements", [])
        b = self.manager.create(user["name"], d.get("name", ""), python=d.get("python") or None,
                                requirements=reqs, display_name=d.get("display_name"))
        env = b.environment
        self.done({"environment": env_model(self.manager, env), "build": build_model(env, b)}, 201,
                  page=self.env_page(env.name))


class EnvironmentHandler(BaseHandler):
    async def get(self, name):
        self.require("view")
        env = self.manager.get_env(self.env_name(name))
        model = env_model(self.manager, env)
        model["drift"] = await self.manager.drift(env.name)
        self.write_json(model)

    def patch(self, name):
        user = self.require("manage")
        d = self.body()
        env = self.manager.set_display_name(user["name"], self.env_name(name), d.get("display_name"))
        self.done(env_model(self.manager, env), page=self.env_page(env.name))

    def delete(self, name):
        user = self.require("manage")
        self.manager.delete(user["name"], self.env_name(name))
        self.set_status(204)
        self.finish()


class DeleteFormHandler(BaseHandler):
    def post(self, name):
        user = self.require("manage")
        self.manager.delete(user["name"], self.env_name(name))
        self.done({"deleted": name})


class DisplayNameHandler(BaseHandler):
    def post(self, name):
        return EnvironmentHandler.patch(self, name)


def _list(value, field):
    if value is None:
        return []
    if isinstance(value, str):  # only newlines separate: other line separators are refused inside a spec
        return [s for s in (line.strip() for line in value.replace(",", "\n").split("\n")) if s]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValidationError(f"{field} must be a list of package specs (strings).")


class PackagesHandler(BaseHandler):
    def post(self, name):
        user = self.require("manage")
        d = self.body()
        name = self.env_name(name)
        add = d.get("add")
        # page forms send one spec per line; "," is a legal part of a version specifier in JSON lists
        add = add.split("\n") if isinstance(add, str) else _list(add, "add")
        b = self.manager.change_packages(user["name"], name, add=[s for s in add if s.strip()],
                                         remove=_list(d.get("remove"), "remove"),
                                         upgrade=_list(d.get("upgrade"), "upgrade"))
        self.done({"build": build_model(b.environment, b)}, 202, page=self.env_page(name))


class RequirementsHandler(BaseHandler):
    """Upload a requirements.txt (multipart file ``requirements``, form text, JSON or text/plain body)."""

    def post(self, name):
        user = self.require("manage")
        name = self.env_name(name)
        mode = "merge"
        ctype = self.request.headers.get("Content-Type", "")
        if self.request.files.get("requirements"):
            text = self.request.files["requirements"][0]["body"].decode("utf-8", "replace")
            mode = self.get_body_argument("mode", "merge")
        elif ctype.startswith("text/plain"):
            text = self.request.body.decode("utf-8", "replace")
            mode = self.get_query_argument("mode", "merge")
        else:
            d = self.body()
            text, mode = d.get("requirements", ""), d.get("mode", "merge")
            if not isinstance(text, str):
                text = "\n".join(_list(text, "requirements"))
        if len(text) > 200_000:
            raise ValidationError("requirements file too large")
        b = self.manager.upload_requirements(user["name"], name, text, mode=mode)
        self.done({"build": build_model(b.environment, b)}, 202, page=self.env_page(name))


def _build_number(value):
    # str.isdigit() accepts '²' and other digits int() refuses
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,9}", str(value)):
        raise ValidationError(f"build must be a build number, not {shown(value, 20)}.")
    return int(value)


class LockfileHandler(BaseHandler):
    def get(self, name):
        self.require("view")
        env = self.manager.get_env(self.env_name(name))
        number = self.get_query_argument("build", None)
        b = self.manager.get_build(env, _build_number(number)) if number else self.manager.current_build(env)
        if b is None or not b.lockfile:
            raise NotFound(f"Environment {env.name!r} has no published build yet.")
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Content-Disposition", f'attachment; filename="{env.name}-requirements.txt"')
        self.set_header("X-Broker-Build", str(b.number))
        self.finish(b.lockfile)


class RollbackHandler(BaseHandler):
    def post(self, name):
        user = self.require("manage")
        d = self.body()
        number = d.get("build")
        number = None if number in ("", None) else _build_number(number)
        b = self.manager.rollback(user["name"], self.env_name(name), number)
        self.done({"build": build_model(b.environment, b)}, 200, page=self.env_page(name))


class DriftHandler(BaseHandler):
    async def get(self, name):
        self.require("view")
        self.write_json(await self.manager.drift(self.env_name(name)))

    async def post(self, name):
        user = self.require("manage")
        d = self.body()
        b = await self.manager.resolve_drift(user["name"], self.env_name(name), d.get("action"))
        self.done({"build": build_model(b.environment, b)}, 202, page=self.env_page(name))


class BuildLogHandler(BaseHandler):
    """A build's log; ``Accept: text/event-stream`` (or ``?follow=1``) streams it live as SSE."""

    async def get(self, name, number):
        self.require("view")
        env = self.manager.get_env(self.env_name(name))
        b = self.manager.get_build(env, int(number))
        follow = "text/event-stream" in self.request.headers.get("Accept", "") or self.get_query_argument(
            "follow", "") == "1"
        if not follow:
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(self.manager.read_log(env.name, b.number))
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        offset, pending = 0, b""
        try:
            while True:
                finished = b.status not in ("queued", "building", "testing")
                chunk = self.manager.read_log(env.name, b.number, offset)
                offset += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.write("data: " + line.decode("utf-8", "replace") + "\n\n")
                if lines:
                    await self.flush()
                if finished and not chunk:
                    self.write("event: done\ndata: " + json.dumps({"status": b.status, "number": b.number}) + "\n\n")
                    await self.flush()
                    break
                await asyncio.sleep(0.2)
        except StreamClosedError:
            return
        self.finish()


class UnmanagedHandler(BaseHandler):
    def get(self):
        self.require("view")
        self.write_json({"unmanaged": self.manager.unmanaged()})


class UnmanagedActionHandler(BaseHandler):
    async def post(self, dirname):
        user = self.require("manage")
        d = self.body()
        b = await self.manager.resolve_unmanaged(user["name"], dirname, d.get("action"), d.get("display_name"))
        if b is None:
            self.done({"discarded": dirname})
        else:
            self.done({"build": build_model(b.environment, b)}, 202, page=self.env_page(b.environment.name))


class HistoryHandler(BaseHandler):
    def get(self):
        self.require("view")
        self.write_json({"actions": [self.action(a) for a in self.manager.history(
            target=self.get_query_argument("environment", None))]})

    def action(self, a):
        m = action_model(a)
        b = self.manager.db.get(Build, a.build_id) if a.build_id else None
        m["build"] = b.number if b else None
        return m


class UsageHandler(BaseHandler):
    def get(self):
        self.require("view")
        self.write_json(self.manager.usage())


# ------------------------------------------------------------------ pages
class PageHandler(BaseHandler):
    api = False

    def render_page(self, template, **ns):
        user = self.current_user
        ns.update(handler=self, user=user, can_manage=scopes.can_manage(user), prefix=self.prefix,
                  xsrf_token=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes) else self.xsrf_token,
                  hub_home=self.settings.get("hub_home", "/hub/home"))
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(self.settings["render"](template, **ns))


class IndexPage(PageHandler):
    def get(self):
        self.require("view")
        m = self.manager
        self.render_page("environments.html", envs=[env_model(m, e, builds=False) for e in m.list_envs()],
                         pythons=sorted(m.pythons), unmanaged=m.unmanaged(), usage=m.usage(), installer=m.installer)


class EnvironmentPage(PageHandler):
    async def get(self, name):
        self.require("view")
        env = self.manager.get_env(self.env_name(name))
        model = env_model(self.manager, env)
        self.render_page("environment.html", env=model, drift=await self.manager.drift(env.name))


class HistoryPage(PageHandler):
    def get(self):
        self.require("view")
        actions = [HistoryHandler.action(self, a) for a in self.manager.history()]
        self.render_page("history.html", actions=actions)


# ------------------------------------------------------------------ routes
NAME = r"([^/]+)"  # one path segment, passed to the handler


def under(prefix):
    """``r(path, handler)``: the route of ``handler`` at ``path`` below ``prefix``."""
    def r(path, handler):
        return (url_path_join(prefix, path), handler)
    return r


def routes(prefix):
    """Every route of the service under ``prefix`` (the service's URL prefix, ending in '/')."""
    from jupyterhub.services.auth import HubOAuthCallbackHandler

    r, name = under(prefix), NAME
    return [
        r("oauth_callback", HubOAuthCallbackHandler),
        r("api/health", HealthHandler),
        r("api/me", MeHandler),
        r("api/environments", EnvironmentsHandler),
        r(f"api/environments/{name}", EnvironmentHandler),
        r(f"api/environments/{name}/delete", DeleteFormHandler),
        r(f"api/environments/{name}/display-name", DisplayNameHandler),
        r(f"api/environments/{name}/packages", PackagesHandler),
        r(f"api/environments/{name}/requirements", RequirementsHandler),
        r(f"api/environments/{name}/lockfile", LockfileHandler),
        r(f"api/environments/{name}/rollback", RollbackHandler),
        r(f"api/environments/{name}/drift", DriftHandler),
        r(f"api/environments/{name}/builds/([0-9]+)/log", BuildLogHandler),
        r("api/unmanaged", UnmanagedHandler),
        r(f"api/unmanaged/{name}", UnmanagedActionHandler),
        r("api/history", HistoryHandler),
        r("api/usage", UsageHandler),
        r("", IndexPage),
        r(f"environments/{name}", EnvironmentPage),
        r("history", HistoryPage),
    ]
