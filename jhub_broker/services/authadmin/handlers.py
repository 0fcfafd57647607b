"""Admin-only routes: live settings, the authentication method (restart), the audit log; pages for them.

Every handler here derives from :class:`AdminHandler`, which asks the hub (with the service's own token)
whether the caller is a hub admin before doing anything.
"""
import json
import os

from jupyterhub.utils import url_path_join
from tornado import web

from ...authenticator.secrets import decrypt
from ..environments.manager import Conflict, NotFound
from ..environments.validation import ValidationError
from ..handlers import NAME, BaseHandler, PageHandler, under
from ..models import action_model
from . import AUDIT_TARGET, methods, settings
from .hubapi import HubAPIError
from .oauthcheck import check_oauth

LIVE_KEYS = ("allowed_users", "admin_users", "admins_only", "allowed_entitlements", "admin_entitlements",
             "s3_grants")
RESTART_KEYS = ("method", "method settings", "method secrets")


class AdminHandler(BaseHandler):
    @property
    def db(self):
        return self.manager.db

    @property
    def hub(self):
        return self.settings["hub_api"]

    @property
    def applier(self):
        return self.settings["method_applier"]

    @property
    def allow_insecure(self):
        return bool(self.settings.get("allow_insecure_login_methods"))

    @property
    def config_admins(self):
        return set(self.settings.get("config_admins", ()))

    async def prepare(self):
        self.db.expire_all()  # the hub's restart helper writes the same tables

    async def require_admin(self):
        """The caller's hub user model if the hub says they are an admin; else 403 (or login for a page)."""
        user = self.hub_user()
        try:
            model = await self.hub.user(user["name"])
        except HubAPIError as e:
            raise web.HTTPError(502, str(e))
        if not model or not model.get("admin"):
            raise web.HTTPError(403, f"{user.get('name')} is not a hub admin: authentication settings are for "
                                     "hub admins only.")
        return user

    def auth_page(self, name=""):
        return url_path_join(self.prefix, "auth", name) if name else url_path_join(self.prefix, "auth")

    def http_error(self, e):
        if isinstance(e, HubAPIError):
            return web.HTTPError(e.status if e.status in (400, 403, 404, 409) else 502, str(e).replace("%", "%%"))
        return super().http_error(e)

    # -- shared state --
    async def admins(self):
        hub_admins = {u["name"] for u in await self.hub.users() if u["admin"]}
        return hub_admins | set(settings.get(self.db, "admin_users"))

    async def guard_last_admin(self, name, what):
        others = await self.admins() - {name}
        if not others:
            raise Conflict(f"{name} is the last admin: make another user admin first, otherwise nobody could "
                           "manage the hub.")
        if name in self.config_admins:
            raise Conflict(f"{name} is an admin in jupyterhub_config.py (Authenticator.admin_users); "
                           f"{what} there, then restart the hub.")

    async def state(self):
        live = settings.load(self.db)
        users = await self.hub.users()
        return {
            "live": {k: live[k] for k in LIVE_KEYS},
            "hub_users": users,
            "config_admins": sorted(self.config_admins),
            "method": methods.masked(settings.get(self.db, "method", None)),
            "restart": settings.get(self.db, "restart_status", None),
            "restart_configured": self.applier.can_restart,
            "method_changes_enabled": bool(self.applier.fragment_path),
            "insecure_methods_allowed": self.allow_insecure,
            "live_settings": list(LIVE_KEYS),
            "restart_settings": list(RESTART_KEYS),
        }


# ------------------------------------------------------------------ API
class AuthStateHandler(AdminHandler):
    async def get(self):
        await self.require_admin()
        self.write_json(await self.state())


class AllowedUsersHandler(AdminHandler):
    async def get(self):
        await self.require_admin()
        self.write_json({"allowed_users": settings.get(self.db, "allowed_users")})

    async def post(self):
        user = await self.require_admin()
        name = settings.validate_username(self.body().get("name", ""))
        await self.hub.ensure_user(name)
        if settings.add_to_list(self.db, "allowed_users", name, user["name"]):
            settings.audit(self.db, user["name"], "auth:allow", name)
        self.db.commit()
        self.done({"allowed_users": settings.get(self.db, "allowed_users")}, 201, page=self.auth_page())


class AllowedUserHandler(AdminHandler):
    async def delete(self, name):
        user = await self.require_admin()
        name = settings.validate_username(name)
        if name in await self.admins():
            await self.guard_last_admin(name, "remove them")
        if name not in settings.get(self.db, "allowed_users") and not await self.hub.user(name):
            raise NotFound(f"{name} is not an allowed user.")
        settings.remove_from_list(self.db, "allowed_users", name, user["name"])
        settings.remove_from_list(self.db, "admin_users", name, user["name"])
        # deleting the hub user ends their sessions and tokens, and the allow_existing_users allowance
        await self.hub.delete_user(name)
        settings.audit(self.db, user["name"], "auth:disallow", name)
        self.db.commit()
        self.done({"allowed_users": settings.get(self.db, "allowed_users")}, 200, page=self.auth_page())


class AllowedUserDeleteForm(AllowedUserHandler):
    post = AllowedUserHandler.delete  # the page's form equivalent of DELETE


class AdminsHandler(AdminHandler):
    async def get(self):
        await self.require_admin()
        self.write_json({"admins": sorted(await self.admins()), "config_admins": sorted(self.config_admins)})

    async def post(self):
        user = await self.require_admin()
        name = settings.validate_username(self.body().get("name", ""))
        await self.hub.ensure_user(name, admin=True)
        settings.add_to_list(self.db, "admin_users", name, user["name"])
        settings.audit(self.db, user["name"], "auth:admin-add", name)
        self.db.commit()
        self.done({"admins": sorted(await self.admins())}, 201, page=self.auth_page())


class AdminHandlerOne(AdminHandler):
    async def delete(self, name):
        user = await self.require_admin()
        name = settings.validate_username(name)
        if name not in await self.admins():
            raise NotFound(f"{name} is not an admin.")
        await self.guard_last_admin(name, "remove their admin right")
        settings.remove_from_list(self.db, "admin_users", name, user["name"])
        if await self.hub.user(name):
            await self.hub.set_admin(name, False)
        settings.audit(self.db, user["name"], "auth:admin-remove", name)
        self.db.commit()
        self.done({"admins": sorted(await self.admins())}, 200, page=self.auth_page())


class AdminDeleteForm(AdminHandlerOne):
    post = AdminHandlerOne.delete


def _flag(value):
    return value in (True, "1", "true", "on", "yes")


class AdminsOnlyHandler(AdminHandler):
    async def get(self):
        await self.require_admin()
        self.write_json({"admins_only": settings.get(self.db, "admins_only")})

    async def put(self):
        user = await self.require_admin()
        on = _flag(self.body().get("enabled"))
        if on and not await self.admins():
            raise Conflict("There is no admin: nobody could log in.")
        settings.put(self.db, "admins_only", on, user["name"])
        settings.audit(self.db, user["name"], "auth:admins-only", "on" if on else "off")
        self.db.commit()
        self.done({"admins_only": on}, page=self.auth_page())

    post = put


class RulesHandler(AdminHandler):
    async def get(self):
        await self.require_admin()
        live = settings.load(self.db)
        self.write_json({k: live[k] for k in ("allowed_entitlements", "admin_entitlements")})

    async def put(self):
        user = await self.require_admin()
        d = self.body()
        out = {}
        for key in ("allowed_entitlements", "admin_entitlements"):
            if key in d:
                out[key] = [settings.validate_pattern(p) for p in settings._strings(d[key], key)]
        if not out:
            raise ValidationError("Send allowed_entitlements and/or admin_entitlements.")
        for key, value in out.items():
            settings.put(self.db, key, value, user["name"])
            settings.audit(self.db, user["name"], f"auth:{key.replace('_', '-')}", ", ".join(value) or "(none)")
        self.db.commit()
        self.done(out, page=self.auth_page())

    post = put


class GrantsHandler(AdminHandler):
    async def get(self):
        await self.require_admin()
        self.write_json({"s3_grants": settings.get(self.db, "s3_grants")})

    async def put(self):
        user = await self.require_admin()
        grants = self.body().get("grants", [])
        if isinstance(grants, str):  # the page's textarea: JSON
            try:
                grants = json.loads(grants or "[]")
            except ValueError as e:
                raise ValidationError(f"S3 grants must be a JSON list: {e}")
        if not isinstance(grants, list):
            raise ValidationError("grants must be a list.")
        grants = [settings.validate_grant(g) for g in grants]
        settings.put(self.db, "s3_grants", grants, user["name"])
        settings.audit(self.db, user["name"], "auth:s3-grants",
                       "; ".join(f"{g['bucket']} {g['level']}" for g in grants) or "(none)")
        self.db.commit()
        self.done({"s3_grants": grants}, page=self.auth_page())

    post = put


class MethodHandler(AdminHandler):
    async def get(self):
        await self.require_admin()
        self.write_json({"method": methods.masked(settings.get(self.db, "method", None)),
                         "restart": settings.get(self.db, "restart_status", None),
                         "methods": {k: {"label": v["label"], "oauth": v["oauth"], "fields": v["fields"]}
                                     for k, v in methods.offered(self.allow_insecure).items()}})

    async def post(self):
        user = await self.require_admin()
        if not self.applier.fragment_path:
            raise Conflict("Method changes are disabled: the service has no auth_config_dir.")
        d = self.body()
        record = methods.build(d.get("kind", ""), d, settings.get(self.db, "method", None), self.allow_insecure)
        status = await self.applier.apply(self.db, record, user["name"])
        self.done({"method": methods.masked(record), "restart": status}, 202, page=self.auth_page("method"))


class MethodTestHandler(AdminHandler):
    """Checks an OAuth method's settings against its issuer (see :mod:`.oauthcheck`); changes nothing.

    An empty secret tests the stored one (same method). Audited without the secret."""

    async def post(self):
        user = await self.require_admin()
        d = self.body()
        record = methods.build(d.get("kind", ""), d, settings.get(self.db, "method", None), self.allow_insecure)
        kind = record["kind"]
        if not methods.METHODS[kind]["oauth"]:
            raise ValidationError(f"{methods.METHODS[kind]['label']} is not an OAuth method.")
        issuer = methods.issuer_of(kind, record["settings"])
        client_id = record["settings"]["client_id"]
        result = await check_oauth(issuer, client_id, decrypt(record["secrets"]["client_secret"]),
                                   redirect_uri=record["settings"].get("oauth_callback_url", ""),
                                   validate_cert=self.settings.get("validate_cert", True),
                                   # the hub checks id_tokens' iss only for these kinds
                                   strict_issuer=kind in ("egi-checkin", "generic-oidc"))
        result.update(issuer=issuer, kind=kind, client_id=client_id)
        failed = [s["step"] for s in result["steps"] if s["ok"] is False]
        settings.audit(self.db, user["name"], "auth:method-test",
                       f"{kind} {issuer} client {client_id}: " + (f"failed ({', '.join(failed)})" if failed
                                                                   else "passed"),
                       result="failed" if failed else "ok")
        self.db.commit()
        if self.from_page:
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            # the tested (non-secret) settings stay in the form, so Apply follows a passed test
            return PageHandler.render_page(self, "auth_method.html", test=result, auth_admin=True,
                                           tested={"kind": kind, "settings": record["settings"]},
                                           **await self._method_ns())
        self.write_json(result)

    async def _method_ns(self):
        return await MethodPage._ns(self)


class RestartStatusHandler(AdminHandler):
    async def get(self):
        await self.require_admin()
        self.write_json({"restart": settings.get(self.db, "restart_status", None)})


class AuditHandler(AdminHandler):
    async def get(self):
        await self.require_admin()
        self.write_json({"actions": [action_model(a) for a in
                                     self.manager.history(target=AUDIT_TARGET, audit=True)]})


# ------------------------------------------------------------------ pages
class AdminPage(AdminHandler):
    api = False

    def render_page(self, template, **ns):
        PageHandler.render_page(self, template, auth_admin=True, **ns)


class AuthPage(AdminPage):
    async def get(self):
        await self.require_admin()
        self.render_page("auth.html", state=await self.state(),
                         grants_json=json.dumps(settings.get(self.db, "s3_grants"), indent=1))


class MethodPage(AdminPage):
    async def get(self):
        await self.require_admin()
        self.render_page("auth_method.html", test=None, tested=None, **await self._ns())

    async def _ns(self):
        return {"state": await AdminHandler.state(self), "methods": methods.offered(self.allow_insecure),
                "fragment_path": self.applier.fragment_path,
                "restart_command": " ".join(self.applier.restart_command)}


class AuditPage(AdminPage):
    async def get(self):
        await self.require_admin()
        self.render_page("auth_audit.html",
                         actions=[action_model(a) for a in self.manager.history(target=AUDIT_TARGET, audit=True)])


def routes(prefix):
    r, name = under(prefix), NAME
    return [
        r("api/auth", AuthStateHandler),
        r("api/auth/allowed-users", AllowedUsersHandler),
        r(f"api/auth/allowed-users/{name}", AllowedUserHandler),
        r(f"api/auth/allowed-users/{name}/delete", AllowedUserDeleteForm),
        r("api/auth/admins", AdminsHandler),
        r(f"api/auth/admins/{name}", AdminHandlerOne),
        r(f"api/auth/admins/{name}/delete", AdminDeleteForm),
        r("api/auth/admins-only", AdminsOnlyHandler),
        r("api/auth/rules", RulesHandler),
        r("api/auth/s3-grants", GrantsHandler),
        r("api/auth/method", MethodHandler),
        r("api/auth/method/test", MethodTestHandler),
        r("api/auth/restart", RestartStatusHandler),
        r("api/auth/audit", AuditHandler),
        r("auth", AuthPage),
        r("auth/method", MethodPage),
        r("auth/audit", AuditPage),
    ]
