"""The JupyterHub RBAC custom scopes the broker service checks."""

MANAGE = "custom:broker-environments:manage"
VIEW = "custom:broker-environments:view"

CUSTOM_SCOPES = {
    MANAGE: {"description": "Create, change, roll back and delete shared Python environments."},
    VIEW: {"description": "See shared Python environments, their builds, logs and history."},
}


def _has(scopes, scope):
    # only an unfiltered grant counts: the broker has no sub-resources to filter on
    return scope in set(scopes or ())


def can_manage(user_model):
    """True if the hub says this user may change environments (hub admins always may)."""
    if not user_model:
        return False
    return bool(user_model.get("admin")) or _has(user_model.get("scopes"), MANAGE)


def can_view(user_model):
    """True if the user may see environments (managers may too)."""
    if not user_model:
        return False
    return can_manage(user_model) or _has(user_model.get("scopes"), VIEW)
