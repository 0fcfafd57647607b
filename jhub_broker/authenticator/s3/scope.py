"""The RBAC scope that lets a token fetch its owner's S3 credentials from the hub route.

Only tokens holding ``custom:s3-credentials`` for their own user get an answer: the tokens of the user's own
servers (``server_token_scopes``, or the hub's ``server`` role that spawners use by default) and the user's
own tokens that inherit all their rights. A token made with chosen scopes, a service's OAuth token, a
service's own token and any other user's token do not.
"""
S3_SCOPE = "custom:s3-credentials"
# the filtered form given to roles: JupyterHub expands ``!user`` to the token owner (``!user=<name>``)
OWN_S3_SCOPE = S3_SCOPE + "!user"
CUSTOM_SCOPES = {S3_SCOPE: {"description": "Fetch your own S3 credentials from the hub (your servers do)."}}
SERVER_ROLE_SCOPES = ["users:activity!user", "access:servers!server"]   # JupyterHub's default `server` role


def scope_defined():
    """True once the hub has declared the scope (``c.JupyterHub.custom_scopes``)."""
    from jupyterhub.scopes import scope_definitions
    return S3_SCOPE in scope_definitions


def _section(c, name):
    if name not in c:
        c[name] = type(c)() if not isinstance(c, dict) else {}
    return c[name]


def _role(roles, name, default_scopes):
    role = next((r for r in roles if r.get("name") == name), None)
    if role is None:
        role = {"name": name, "scopes": list(default_scopes)}
        roles.append(role)
    return role


def add_s3_scope(c):
    """Declare ``custom:s3-credentials`` in ``c`` (a traitlets Config or nested dict) and give it to users for
    themselves and to their servers' tokens (the ``user`` and ``server`` roles). Call it after anything else
    that sets ``load_roles``; it keeps the scopes those roles already have."""
    jh = _section(c, "JupyterHub")
    jh["custom_scopes"] = {**dict(jh.get("custom_scopes", {})), **CUSTOM_SCOPES}
    roles = [dict(r) for r in jh.get("load_roles", [])]
    if any(r.get("name") == "user" for r in roles):
        # a `user` role in load_roles makes the hub ignore extra_user_scopes
        user = _role(roles, "user", ["self"])
        user["scopes"] = sorted(set(user.get("scopes") or ["self"]) | {OWN_S3_SCOPE})
    else:
        jh["extra_user_scopes"] = sorted(set(jh.get("extra_user_scopes", [])) | {OWN_S3_SCOPE})
    server = _role(roles, "server", SERVER_ROLE_SCOPES)
    server["scopes"] = sorted(set(server.get("scopes") or SERVER_ROLE_SCOPES) | {OWN_S3_SCOPE})
    jh["load_roles"] = roles
    return c
