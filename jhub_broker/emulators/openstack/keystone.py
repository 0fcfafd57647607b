"""Keystone v3: discovery, tokens, catalog, projects, OIDC federation, EC2 credentials
(application credentials: keystone_appcreds.py)."""
import hmac
import json
import secrets

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from . import keystone_appcreds
from .cloud import hex_id, now_iso_us
from .web import APIError, BaseHandler

PREFIX = "/identity"


def version_doc(cloud):
    return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{cloud.base_url}{PREFIX}/v3/"}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}


# the services in the catalog, and the URL path each lives under
CATALOG = [
    ("identity", "keystone", PREFIX + "/v3/"),
    ("compute", "nova", "/compute/v2.1"),
    ("network", "neutron", "/network"),
    ("image", "glance", "/image"),
    ("volumev3", "cinderv3", "/volume/v3/{project_id}"),
    ("block-storage", "cinder", "/volume/v3/{project_id}"),
]


def catalog(cloud, project_id):
    out = []
    for stype, name, path in CATALOG:
        url = cloud.base_url + path.format(project_id=project_id)
        out.append({"type": stype, "name": name, "id": hex_id()[:16] + stype,
                    "endpoints": [{"id": hex_id(), "interface": iface, "region_id": cloud.config["region"],
                                   "region": cloud.config["region"], "url": url}
                                  for iface in ("public", "internal", "admin")]})
    return out


def token_body(cloud, info, with_catalog=True):
    user, project = info["user"], info["project"]
    domain = {"id": cloud.domain["id"], "name": cloud.domain["name"]}
    tok = {"methods": info["methods"], "audit_ids": [secrets.token_urlsafe(16)[:22]],
           "expires_at": now_iso_us(info["expires"]), "issued_at": now_iso_us(info["issued"]),
           "user": {"domain": domain, "id": user["id"], "name": user["name"], "password_expires_at": None}}
    if project is not None:
        tok["project"] = {"domain": domain, "id": project["id"], "name": project["name"]}
        tok["is_domain"] = False
        tok["roles"] = [{"id": "role-" + r, "name": r} for r in info["roles"]]
        if with_catalog:
            tok["catalog"] = catalog(cloud, project["id"])
    if info.get("app_cred"):
        tok["application_credential"] = {"id": info["app_cred"]["id"], "name": info["app_cred"]["name"],
                                         "restricted": not info["app_cred"].get("unrestricted")}
    if user.get("federated"):
        tok["user"]["OS-FEDERATION"] = {"identity_provider": {"id": user["idp"]},
                                        "protocol": {"id": "openid"}, "groups": []}
    return {"token": tok}


class VersionsHandler(BaseHandler):
    requires_auth = False

    def get(self):
        self.send({"versions": {"values": [version_doc(self.cloud)]}}, status=300)


class V3Handler(BaseHandler):
    requires_auth = False

    def get(self):
        self.send({"version": version_doc(self.cloud)})


class TokensHandler(BaseHandler):
    requires_auth = False

    def _scope_project(self, scope, user):
        if not scope:
            pid = user.get("default_project_id")
            return self.cloud.projects.get(pid) if pid else None
        if "project" not in scope:
            raise APIError(400, "Only project scope is supported by this cloud.", kind="Bad Request")
        p = scope["project"]
        project = self.cloud.projects.get(p.get("id")) if p.get("id") else self.cloud.project_by_name(p.get("name"))
        if project is None:
            raise APIError(401, "The request you have made requires authentication.", kind="Unauthorized")
        return project

    def post(self):
        data = self.body()
        try:
            identity = data["auth"]["identity"]
            methods = identity["methods"]
        except (KeyError, TypeError):
            raise APIError(400, "Expecting to find identity in auth. The server could not comply with the "
                                "request since it is either malformed or otherwise incorrect.", kind="Bad Request")
        scope = data["auth"].get("scope")
        cloud = self.cloud
        unauthorized = APIError(401, "The request you have made requires authentication.", kind="Unauthorized")
        if "application_credential" in methods:
            ac = identity.get("application_credential") or {}
            cred = cloud.app_creds.get(ac.get("id") or "")
            if cred is None and ac.get("name"):
                uname = (ac.get("user") or {}).get("name") or (ac.get("user") or {}).get("id")
                user = cloud.user_by_name(uname or "")
                cred = next((c for c in cloud.app_creds.values()
                             if user and c["name"] == ac["name"] and c["user_id"] == user["id"]), None)
            if cred is None or not isinstance(ac.get("secret"), str) or \
                    not hmac.compare_digest(cred["secret"].encode(), ac["secret"].encode()) or \
                    keystone_appcreds.expired(cred):
                raise unauthorized
            if scope:
                raise APIError(401, "Application credentials cannot request a scope.", kind="Unauthorized")
            user = cloud.users[cred["user_id"]]
            project = cloud.projects[cred["project_id"]]
            token, info = cloud.issue_token(user, project, ["application_credential"], app_cred=cred,
                                            roles=cred["roles"])
        elif "password" in methods:
            u = (identity.get("password") or {}).get("user") or {}
            user = cloud.user_by_name(u.get("id") or u.get("name") or "")
            if user is None or user["password"] is None or user["password"] != u.get("password"):
                raise unauthorized
            project = self._scope_project(scope, user)
            token, info = cloud.issue_token(user, project, ["password"])
        elif "token" in methods:
            old = cloud.check_token((identity.get("token") or {}).get("id"))
            if old is None:
                raise unauthorized
            project = self._scope_project(scope, old["user"])
            token, info = cloud.issue_token(old["user"], project, old["methods"] if old["methods"] != ["token"] else ["token"])
        else:
            raise APIError(401, f"Attempted to authenticate with an unsupported method: {methods}", kind="Unauthorized")
        nocatalog = self.get_argument("nocatalog", None) is not None
        self.send(token_body(cloud, info, with_catalog=not nocatalog), status=201,
                  headers={"X-Subject-Token": token})

    def _subject(self):
        caller = self.cloud.check_token(self.request.headers.get("X-Auth-Token"))
        if caller is None:
            raise APIError(401, "The request you have made requires authentication.", kind="Unauthorized")
        subject = self.request.headers.get("X-Subject-Token")
        info = self.cloud.check_token(subject)
        if info is None:
            raise APIError(404, f"Could not find token: {subject}", kind="Not Found")
        return subject, info

    def get(self):
        subject, info = self._subject()
        self.send(token_body(self.cloud, info), headers={"X-Subject-Token": subject})

    def head(self):
        self._subject()
        self.set_status(200)
        self.finish()

    def delete(self):
        subject, _ = self._subject()
        self.cloud.tokens.pop(subject, None)
        self.send(None, status=204)


def project_view(cloud, p):
    return {k: v for k, v in p.items()} | {"links": {"self": f"{cloud.base_url}{PREFIX}/v3/projects/{p['id']}"}}


class ProjectsHandler(BaseHandler):
    def get(self, project_id=None):
        cloud = self.cloud
        if project_id:
            p = cloud.projects.get(project_id)
            if p is None or (not self.is_admin and p["id"] != self.project_id):
                raise APIError(404, f"Could not find project: {project_id}.", kind="Not Found")
            return self.send({"project": project_view(cloud, p)})
        projects = list(cloud.projects.values()) if self.is_admin else [self.token["project"]]
        name = self.get_argument("name", None)
        if name:
            projects = [p for p in projects if p["name"] == name]
        self.send({"projects": [project_view(cloud, p) for p in projects if p],
                   "links": {"self": f"{cloud.base_url}{PREFIX}/v3/projects", "next": None, "previous": None}})


class AuthProjectsHandler(BaseHandler):
    """Projects the token may scope to (used by federated logins)."""

    def get(self, user_id=None):
        user = self.token["user"]
        if user_id and user_id != user["id"] and not self.is_admin:
            raise APIError(403, "You are not authorized to perform the requested action.", kind="Forbidden")
        projects = [self.cloud.projects[user["default_project_id"]]]
        self.send({"projects": [project_view(self.cloud, p) for p in projects],
                   "links": {"self": None, "next": None, "previous": None}})


class UsersHandler(BaseHandler):
    def get(self, user_id):
        user = self.cloud.users.get(user_id)
        if user is None or (user_id != self.token["user"]["id"] and not self.is_admin):
            raise APIError(404, f"Could not find user: {user_id}.", kind="Not Found")
        self.send({"user": {"id": user["id"], "name": user["name"], "domain_id": user["domain_id"],
                            "enabled": True, "default_project_id": user["default_project_id"],
                            "password_expires_at": None, "options": {}, "links": {}}})


class FederationAuthHandler(BaseHandler):
    """``OS-FEDERATION`` OIDC auth: an IdP access token in, an unscoped token out.

    Real Keystone sits behind mod_auth_openidc, which validates the bearer
    token with the IdP; here the cloud asks the IdP's userinfo endpoint
    (``federation.userinfo_url``) the same way, or a static token map.
    """

    requires_auth = False

    async def _auth(self, idp, protocol):
        fed = self.cloud.config["federation"]
        if idp not in fed.get("identity_providers", []):
            raise APIError(404, f"Could not find Identity Provider: {idp}.", kind="Not Found")
        if protocol != fed.get("protocol", "openid"):
            raise APIError(404, f"Could not find federated protocol {protocol} for Identity Provider: {idp}.",
                           kind="Not Found")
        header = self.request.headers.get("Authorization", "")
        access_token = header[7:].strip() if header.lower().startswith("bearer ") else None
        if not access_token:
            access_token = self.request.headers.get("OIDC-access_token")
        if not access_token:
            raise APIError(401, "The request you have made requires authentication.", kind="Unauthorized")
        claims = None
        static = fed.get("tokens") or {}
        if access_token in static:
            claims = static[access_token]
        elif self.cloud.federation_introspect is not None:
            claims = await self.cloud.federation_introspect(access_token)
        elif fed.get("userinfo_url"):
            try:
                resp = await AsyncHTTPClient().fetch(fed["userinfo_url"],
                                                     headers={"Authorization": f"Bearer {access_token}"})
                claims = json.loads(resp.body)
            except (HTTPClientError, OSError, ValueError):
                claims = None
        if not claims or not claims.get("sub"):
            raise APIError(401, "The request you have made requires authentication.", kind="Unauthorized")
        user = self.cloud.federated_user(idp, claims["sub"], claims.get("preferred_username") or claims["sub"])
        token, info = self.cloud.issue_token(user, None, ["openid"])
        self.send(token_body(self.cloud, info), status=201, headers={"X-Subject-Token": token})

    async def get(self, idp, protocol):
        await self._auth(idp, protocol)

    async def post(self, idp, protocol):
        await self._auth(idp, protocol)


def ec2_view(cloud, cred):
    return {"user_id": cred["user_id"], "tenant_id": cred["tenant_id"], "access": cred["access"],
            "secret": cred["secret"], "trust_id": None,
            "links": {"self": f"{cloud.base_url}{PREFIX}/v3/users/{cred['user_id']}/credentials/OS-EC2/{cred['access']}"}}


class EC2CredentialsHandler(BaseHandler):
    """EC2-style credentials for the S3 API of Swift/Ceph RGW."""

    def _check_user(self, user_id):
        if user_id != self.token["user"]["id"] and not self.is_admin:
            raise APIError(403, "You are not authorized to perform the requested action: "
                                "identity:ec2_create_credential.", kind="Forbidden")

    def get(self, user_id, access=None):
        self._check_user(user_id)
        creds = [c for c in self.cloud.ec2_credentials.values() if c["user_id"] == user_id]
        if access:
            cred = self.cloud.ec2_credentials.get(access)
            if cred is None or cred["user_id"] != user_id:
                raise APIError(404, f"Could not find credential: {access}.", kind="Not Found")
            return self.send({"credential": ec2_view(self.cloud, cred)})
        self.send({"credentials": [ec2_view(self.cloud, c) for c in creds],
                   "links": {"self": None, "next": None, "previous": None}})

    def post(self, user_id, access=None):
        self._check_user(user_id)
        data = self.body()
        tenant = data.get("tenant_id") or (self.token["project"] or {}).get("id") or \
            self.cloud.users[user_id]["default_project_id"]
        if tenant not in self.cloud.projects:
            raise APIError(400, f"Could not find project: {tenant}.", kind="Bad Request")
        cred = {"user_id": user_id, "tenant_id": tenant, "access": hex_id(), "secret": hex_id()}
        self.cloud.ec2_credentials[cred["access"]] = cred
        self.send({"credential": ec2_view(self.cloud, cred)}, status=201)

    def delete(self, user_id, access=None):
        self._check_user(user_id)
        cred = self.cloud.ec2_credentials.get(access or "")
        if cred is None or cred["user_id"] != user_id:
            raise APIError(404, f"Could not find credential: {access}.", kind="Not Found")
        del self.cloud.ec2_credentials[access]
        self.send(None, status=204)


def routes(cloud):
    a = {"cloud": cloud}
    p = PREFIX
    return keystone_appcreds.routes(cloud) + [
        (rf"{p}/?", VersionsHandler, a),
        (rf"{p}/v3/?", V3Handler, a),
        (rf"{p}/v3/auth/tokens/?", TokensHandler, a),
        (rf"{p}/v3/auth/projects/?", AuthProjectsHandler, a),
        (rf"{p}/v3/projects/?", ProjectsHandler, a),
        (rf"{p}/v3/projects/([^/]+)/?", ProjectsHandler, a),
        (rf"{p}/v3/users/([^/]+)/projects/?", AuthProjectsHandler, a),
        (rf"{p}/v3/users/([^/]+)/credentials/OS-EC2/?", EC2CredentialsHandler, a),
        (rf"{p}/v3/users/([^/]+)/credentials/OS-EC2/([^/]+)/?", EC2CredentialsHandler, a),
        (rf"{p}/v3/users/([^/]+)/?", UsersHandler, a),
        (rf"{p}/v3/OS-FEDERATION/identity_providers/([^/]+)/protocols/([^/]+)/auth/?", FederationAuthHandler, a),
    ]
