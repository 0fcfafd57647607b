"""Add the broker service, its RBAC scopes and roles to a JupyterHub config."""
import json
import os
import socket
import sys
import warnings

from traitlets.config import Config

from .environments.builder import secret_name
from .scopes import CUSTOM_SCOPES, MANAGE, VIEW


def _section(c, name):
    if name not in c:
        c[name] = Config() if isinstance(c, Config) else {}
    return c[name]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Passed from the hub's environment to the service: where packages come from and how TLS/proxies work.
PASS_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
            "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
PASS_ENV_PREFIXES = ("PIP_", "UV_")
CRYPT_KEY_ENV = "JUPYTERHUB_CRYPT_KEY"


def write_crypt_key_file(path, key):
    """Write the hub's crypt key to ``path`` (0600, in a 0700 directory), atomically and only when it changed."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    try:
        with open(path) as f:
            if f.read() == key:
                os.chmod(path, 0o600)
                return
    except FileNotFoundError:
        pass
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    os.replace(tmp, path)


def service_config(c, name="broker", port=None, environments_root="/opt/jhub-broker/environments",
                   jupyter_data_dir=None, db_url=None, managers=(), manager_groups=(), all_users_view=True,
                   initial_environments=(), extra_args=(), environment=None, python=sys.executable,
                   auth_admin=False, crypt_key_file=None):
    """Add the broker as a hub-managed service to ``c`` (a traitlets ``Config`` or a nested dict).

    - ``c.JupyterHub.services`` gets the service (started by the hub, OAuth without a confirm page);
    - ``c.JupyterHub.custom_scopes`` gets ``custom:broker-environments:{manage,view}``;
    - role ``broker-managers`` (manage + view + access) goes to ``managers``/``manager_groups``;
      hub admins may always manage (the service checks the hub's admin flag);
    - ``initial_environments`` (e.g. ``[{"name": "example", "requirements": ["six"]}]``) are built at the
      service's first start (the demo's ready example);
    - with ``all_users_view``, the default ``user`` role may open the service and view environments;
    - the hub's TLS, proxy and index settings (``SSL_CERT_FILE``, ``HTTPS_PROXY``, ``PIP_*``, ``UV_*``) are
      passed to the service, plus ``environment``; JupyterHub stores that dict in its database, so it must
      never hold a secret;
    - the hub's ``$JUPYTERHUB_CRYPT_KEY`` (the authentication pages encrypt OAuth secrets with it) is written to
      ``crypt_key_file`` (default ``<environments_root>/.state/hub-crypt-key``, mode 0600 in a 0700 directory)
      and the service gets that path (``--BrokerService.crypt_key_file``), never the key;
    - ``c.Spawner.environment['JUPYTER_PATH']`` gets the shared kernels' data dir, so every user's
      server lists the published kernels;
    - without ``auth_admin`` the service's token gets no role: it calls no hub API (resolving a visitor's
      OAuth token needs only that visitor's token). With ``auth_admin``, the service joins the hub's ``admin``
      role: its authentication pages list, create and delete users (``list:users``, ``read:users``,
      ``admin:users``, ``delete:users``) and grant or revoke the admin flag, which JupyterHub allows only to a
      holder of the ``admin`` role ("Only admins can grant admin permissions", also to change an admin). The
      pages themselves answer hub admins only, and the token never leaves the service process (builds get a
      minimal environment).

    Returns the service's URL.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = jupyter_data_dir or os.path.join(environments_root, ".jupyter")
    cmd = [python, "-m", "jhub_broker.services", f"--BrokerService.environments_root={environments_root}",
           f"--BrokerService.jupyter_data_dir={data_dir}"]
    if db_url:
        cmd.append(f"--BrokerService.db_url={db_url}")
    key = os.environ.get(CRYPT_KEY_ENV, "")
    key_file = crypt_key_file or os.path.join(environments_root, ".state", "hub-crypt-key")
    if key.strip():
        try:
            write_crypt_key_file(key_file, key)
        except OSError as e:  # the service will say it cannot encrypt; the hub itself still starts
            warnings.warn(f"jhub_broker: cannot write the crypt key file {key_file} for the broker service: {e}")
    if key.strip() or os.path.exists(key_file):
        cmd.append(f"--BrokerService.crypt_key_file={key_file}")
    cmd += list(extra_args)
    access = f"access:services!service={name}"
    jh = _section(c, "JupyterHub")
    services = list(jh.get("services", []))
    spec = {"name": name, "url": url, "command": cmd, "oauth_no_confirm": True, "display": True,
            "oauth_client_allowed_scopes": [MANAGE, VIEW]}
    env_vars = {k: v for k, v in os.environ.items() if k in PASS_ENV or k.startswith(PASS_ENV_PREFIXES)}
    if initial_environments:
        env_vars["JHUB_BROKER_INITIAL_ENVIRONMENTS"] = json.dumps(list(initial_environments))
    env_vars.update(environment or {})
    for k in [k for k in env_vars if secret_name(k)]:
        # JupyterHub keeps a service's environment in clear in its database
        warnings.warn(f"jhub_broker: {k} is not passed to the broker service: its environment is stored in "
                      "the hub's database")
        del env_vars[k]
    if env_vars:
        spec["environment"] = env_vars
    services.append(spec)
    jh["services"] = services

    custom = dict(jh.get("custom_scopes", {}))
    custom.update(CUSTOM_SCOPES)
    jh["custom_scopes"] = custom

    roles = [r for r in jh.get("load_roles", []) if r.get("name") not in ("broker-managers",)]
    roles.append({"name": "broker-managers", "description": "Manage shared Python environments",
                  "scopes": [MANAGE, VIEW, access], "users": list(managers), "groups": list(manager_groups)})
    if all_users_view:
        user_role = next((r for r in roles if r.get("name") == "user"), None)
        if user_role is None:
            user_role = {"name": "user", "scopes": ["self"]}
            roles.append(user_role)
        user_role["scopes"] = sorted(set(user_role.get("scopes", ["self"])) | {access, VIEW})
    if auth_admin:
        admin_role = next((r for r in roles if r.get("name") == "admin"), None)
        if admin_role is None:
            admin_role = {"name": "admin"}
            roles.append(admin_role)
        admin_role["services"] = sorted(set(admin_role.get("services", [])) | {name})
    jh["load_roles"] = roles

    sp = _section(c, "Spawner")
    env = dict(sp.get("environment", {}))
    paths = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if data_dir not in paths:
        paths.append(data_dir)
    env["JUPYTER_PATH"] = os.pathsep.join(paths)
    sp["environment"] = env
    return url
