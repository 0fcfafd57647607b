"""``jhub_broker.configure(c, ...)``: the whole product in one call in ``jupyterhub_config.py``.

Everything it sets is a plain trait in ``c``: lines after the call override any of it (and also win over the
login method chosen on the service's page, whose generated fragment is loaded inside this call).
"""
import glob
import json
import os

from .services.config import _section, service_config

LIVE = "jhub_broker.authenticator.live."
AUTHENTICATORS = {
    "egi-checkin": LIVE + "LiveCheckinAuthenticator",
    "generic-oidc": LIVE + "LiveOIDCAuthenticator",
    "gitlab": LIVE + "LiveGitLabOAuthenticator",
    "azuread": LIVE + "LiveAzureAdOAuthenticator",
    "native": LIVE + "LiveNativeAuthenticator",
    "pam": LIVE + "LivePAMAuthenticator",
    "dummy": LIVE + "LiveDummyAuthenticator",
}
SPAWNERS = {"openstack": "OpenStackSpawner"}
DEFAULT_ROOT = "/opt/jhub-broker/environments"


def _class_section(cls):
    name = cls if isinstance(cls, str) else cls.__name__
    return SPAWNERS.get(name, name.rsplit(".", 1)[-1])


def load_fragments(c, directory):
    """Exec every ``*.py`` in ``directory`` (sorted; hidden files and backups skipped) with ``c`` in scope."""
    loaded = []
    for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
        if os.path.basename(path).startswith("."):
            continue
        with open(path) as f:
            code = compile(f.read(), path, "exec")
        exec(code, {"c": c, "__file__": path})  # noqa: S102 - the operator's own config directory
        loaded.append(path)
    return loaded


def configure(c, *, spawner="openstack", cloud=None, image=None, flavor=None, spawner_options=None,
              authenticator="egi-checkin", auth_options=None, admin_users=(), allowed_users=(),
              allow_existing_users=None, broker=True, environments_root=DEFAULT_ROOT, db_url=None,
              managers=(), initial_environments=(), auth_config_dir=None, restart_command=(),
              restart_timeout=None, service_args=()):
    """Wire spawner, authenticator, the broker service, roles and scopes into ``c``.

    - ``spawner``: ``"openstack"`` (default; ``cloud``/``image``/``flavor`` and ``spawner_options`` go to
      ``c.OpenStackSpawner``; ``JupyterHub.cleanup_servers`` defaults to False so that VMs survive hub restarts
      and are adopted) or any spawner class / import string (options go to its section).
    - ``authenticator``: ``egi-checkin`` (default), ``generic-oidc``, ``gitlab``, ``azuread``, ``native``, ``pam``,
      ``dummy`` — each the live-settings variant reading the service's store at every login — or any class
      or import string. ``auth_options`` go to its config section.
    - ``admin_users``: bootstrap admins, allowed at their very first login (no approval step); the service's
      page cannot remove them. ``allowed_users`` as ``Authenticator.allowed_users``.
    - ``allow_existing_users``: default True except for egi-checkin (there VO membership stays the rule:
      a user who left the VO must not keep access because they once logged in).
    - ``broker``: add the broker service (:func:`service_config`) with its roles and scopes, the authentication
      admin pages, and point the authenticator at the service's settings database.
    - always: the ``custom:s3-credentials`` scope, held by users for themselves and by their servers' tokens
      (``jhub_broker.authenticator.s3.scope.add_s3_scope``).
    - ``auth_config_dir``: where the login-method page writes its fragment; loaded here. ``restart_command``
      restarts the hub after a method change (e.g. ``["systemctl", "restart", "jupyterhub"]``).
    Returns ``c``.
    """
    jh = _section(c, "JupyterHub")
    # -- spawner
    jh["spawner_class"] = spawner
    if spawner == "openstack" and "cleanup_servers" not in jh:
        # VMs outlive a hub restart (e.g. after a login-method change) and the new hub adopts them; stopping
        # the users' servers on every restart would reboot everyone's VM
        jh["cleanup_servers"] = False
    sp_opts = dict(spawner_options or {})
    for k, v in (("cloud", cloud), ("image", image), ("flavor", flavor)):
        if v is not None:
            sp_opts[k] = v
    if spawner == "openstack" and sp_opts.get("profiles"):
        # a mistake in the profiles stops the hub here, naming profile and key, instead of at the first spawn
        from .spawner.profiles import parse_profiles
        parse_profiles(sp_opts["profiles"])
    if sp_opts:
        section = _section(c, _class_section(spawner))
        for k, v in sp_opts.items():
            section[k] = v
    # -- authenticator
    auth_cls = AUTHENTICATORS.get(authenticator, authenticator) if isinstance(authenticator, str) else authenticator
    jh["authenticator_class"] = auth_cls
    if auth_options:
        section = _section(c, _class_section(auth_cls))
        for k, v in auth_options.items():
            section[k] = v
    a = _section(c, "Authenticator")
    if admin_users:
        a["admin_users"] = set(admin_users)
    if allowed_users:
        a["allowed_users"] = set(allowed_users)
    if "allow_all" not in a:  # explicit: only listed users, admins and live rules get in
        a["allow_all"] = False
    a["allow_existing_users"] = (authenticator != "egi-checkin") if allow_existing_users is None \
        else bool(allow_existing_users)
    if authenticator == "native":
        # the EOSC trap: with open_signup off, the first admin had nobody to approve them
        _section(c, "NativeAuthenticator").setdefault("open_signup", False)
    # -- broker service
    if broker:
        root = environments_root
        url = db_url or "sqlite:///" + os.path.join(root, ".state", "broker.sqlite")
        args = list(service_args)
        if auth_config_dir:
            args.append(f"--BrokerService.auth_config_dir={auth_config_dir}")
        if restart_timeout:
            args.append(f"--BrokerService.restart_timeout={int(restart_timeout)}")
        env = {"JHUB_BROKER_CONFIG_ADMINS": json.dumps(sorted(admin_users))}
        if restart_command:
            env["JHUB_BROKER_RESTART_COMMAND"] = json.dumps(list(restart_command))
        service_config(c, environments_root=root, db_url=db_url, managers=managers, auth_admin=True,
                       initial_environments=initial_environments, extra_args=args, environment=env)
        _section(c, "LiveSettingsMixin")["live_settings_url"] = url
    # after the broker's roles: users' servers may fetch their own S3 credentials from the hub
    from .authenticator.s3.scope import add_s3_scope
    add_s3_scope(c)
    if auth_config_dir and os.path.isdir(auth_config_dir):
        load_fragments(c, auth_config_dir)
    return c
