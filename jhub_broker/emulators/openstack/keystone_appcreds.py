"""Keystone application credentials: ``/v3/users/{user_id}/application_credentials[/{id}]``.

As in Keystone: a user manages only their own; a credential is made from a project-scoped token, for
that project, with a subset of the roles the token carries (all of them by default); the secret is
shown once, in the answer to the create; ``unrestricted`` is false unless asked for, and a token got
with a restricted credential cannot make or delete credentials.  Access rules are not supported (a
request with some is refused rather than silently not enforced).
"""
import datetime
import secrets
import time

from .cloud import hex_id
from .web import APIError, BaseHandler

PREFIX = "/identity"


def _parse_expiry(value):
    if value is None:
        return None
    if not isinstance(value, str):
        raise APIError(400, f"Invalid input for field 'expires_at': {value!r} is not a date-time.",
                       kind="Bad Request")
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise APIError(400, f"Invalid input for field 'expires_at': {value!r} is not a date-time.",
                       kind="Bad Request") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    if when <= datetime.datetime.now(datetime.timezone.utc):
        raise APIError(400, "The expiration time of the application credential must be in the future.",
                       kind="Bad Request")
    return when.timestamp()


def expired(cred):
    return cred.get("expires_ts") is not None and cred["expires_ts"] <= time.time()


class ApplicationCredentialsHandler(BaseHandler):
    def _owner(self, user_id, action="get"):
        # an admin may look at and delete another user's credentials, but makes credentials only for itself
        if user_id != self.token["user"]["id"] and (action == "create" or not self.is_admin):
            raise APIError(403, "You are not authorized to perform the requested action: "
                                f"identity:{action}_application_credential.", kind="Forbidden")
        user = self.cloud.users.get(user_id)
        if user is None:
            raise APIError(404, f"Could not find user: {user_id}.", kind="Not Found")
        return user

    def _view(self, cred):
        expires = cred.get("expires_ts")
        return {"id": cred["id"], "name": cred["name"], "description": cred.get("description"),
                "user_id": cred["user_id"], "project_id": cred["project_id"],
                "roles": [{"id": "role-" + r, "name": r, "domain_id": None} for r in cred["roles"]],
                "expires_at": datetime.datetime.fromtimestamp(expires, datetime.timezone.utc)
                .strftime("%Y-%m-%dT%H:%M:%S.%f") if expires else None,
                "unrestricted": bool(cred.get("unrestricted")), "access_rules": [],
                "links": {"self": f"{self.cloud.base_url}{PREFIX}/v3/users/{cred['user_id']}/"
                                  f"application_credentials/{cred['id']}"}}

    def _restricted_caller(self, action):
        cred = self.token.get("app_cred")
        if cred is not None and not cred.get("unrestricted"):
            raise APIError(403, f"Using method 'application_credential' is not allowed for {action} "
                                "additional application credentials.", kind="Forbidden")

    def _find(self, user_id, cred_id):
        cred = self.cloud.app_creds.get(cred_id)
        if cred is None or cred["user_id"] != user_id:
            raise APIError(404, f"Could not find Application Credential: {cred_id}.", kind="Not Found")
        return cred

    def get(self, user_id, cred_id=None):
        self._owner(user_id)
        if cred_id is not None:
            return self.send({"application_credential": self._view(self._find(user_id, cred_id))})
        creds = [c for c in self.cloud.app_creds.values() if c["user_id"] == user_id]
        name = self.get_argument("name", None)
        if name is not None:
            creds = [c for c in creds if c["name"] == name]
        self.send({"application_credentials": [self._view(c) for c in creds],
                   "links": {"self": f"{self.cloud.base_url}{self.request.path}", "next": None,
                             "previous": None}})

    def post(self, user_id, cred_id=None):
        if cred_id is not None:
            raise APIError(405, "Method not allowed")
        user = self._owner(user_id, "create")
        self._restricted_caller("managing")
        data = self.body().get("application_credential")
        if not isinstance(data, dict):
            raise APIError(400, "Invalid input for field 'application_credential': a JSON object is required.",
                           kind="Bad Request")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise APIError(400, "Invalid input for field 'name': a name of 1 to 255 characters is required.",
                           kind="Bad Request")
        project = self.token.get("project")
        if project is None:
            raise APIError(400, "Application credentials are made with a project-scoped token.",
                           kind="Bad Request")
        if data.get("access_rules"):
            raise APIError(400, "The local cloud does not support access rules on application credentials.",
                           kind="Bad Request")
        unrestricted = data.get("unrestricted", False)
        if not isinstance(unrestricted, bool):
            raise APIError(400, "Invalid input for field 'unrestricted': true or false.", kind="Bad Request")
        secret = data.get("secret")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise APIError(400, "Invalid input for field 'secret': a non-empty string.", kind="Bad Request")
        held = list(self.token["roles"])
        roles = []
        for role in data.get("roles") or [{"name": r} for r in held]:
            rname = role.get("name") if isinstance(role, dict) else None
            if rname is None and isinstance(role, dict) and isinstance(role.get("id"), str):
                rname = role["id"][5:] if role["id"].startswith("role-") else role["id"]
            if rname not in held:
                raise APIError(404, f"Could not find role assignment with role: {rname}, user or group: {user_id},"
                                    f" project, domain, or system: {project['id']}.", kind="Not Found")
            if rname not in roles:
                roles.append(rname)
        if any(c["user_id"] == user_id and c["name"] == name for c in self.cloud.app_creds.values()):
            raise APIError(409, "Conflict occurred attempting to store application_credential - "
                                "Duplicate name, " + name + ".", kind="Conflict")
        cred = {"id": hex_id(), "name": name, "description": data.get("description"),
                "secret": secret or secrets.token_urlsafe(64), "user_id": user["id"],
                "project_id": project["id"], "roles": roles, "unrestricted": unrestricted,
                "expires_ts": _parse_expiry(data.get("expires_at"))}
        self.cloud.app_creds[cred["id"]] = cred
        # the only time the secret is shown
        self.send({"application_credential": self._view(cred) | {"secret": cred["secret"]}}, status=201)

    def delete(self, user_id, cred_id=None):
        if cred_id is None:
            raise APIError(405, "Method not allowed")
        self._owner(user_id, "delete")
        self._restricted_caller("managing")
        cred = self._find(user_id, cred_id)
        del self.cloud.app_creds[cred["id"]]
        # tokens made with it stop working, as in Keystone
        for token, info in list(self.cloud.tokens.items()):
            if (info.get("app_cred") or {}).get("id") == cred["id"]:
                del self.cloud.tokens[token]
        self.send(None, status=204)


def routes(cloud):
    a = {"cloud": cloud}
    return [
        (rf"{PREFIX}/v3/users/([^/]+)/application_credentials/?", ApplicationCredentialsHandler, a),
        (rf"{PREFIX}/v3/users/([^/]+)/application_credentials/([^/]+)/?", ApplicationCredentialsHandler, a),
    ]
