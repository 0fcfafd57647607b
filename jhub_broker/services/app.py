"""The broker service application: configuration, database, manager and the tornado app."""
import asyncio
import os
import sys
from urllib.parse import urlparse

import jinja2
from jupyterhub.utils import url_path_join
from tornado import web
from traitlets import Dict, Enum, Integer, List, Unicode, default
from traitlets.config import Application

from . import handlers as h
from .authadmin.apply import MethodApplier
from .authadmin.handlers import routes as authadmin_routes
from .authadmin.hubapi import HubAPI
from .authadmin.traits import AuthAdminTraits
from .db import make_session_factory
from .environments.builder import BUILD_ENV_ALLOW, python_version
from .environments.manager import EnvironmentManager

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "templates")


class BrokerService(Application, AuthAdminTraits):
    name = "jhub-broker-service"
    description = "Shared Python environments as a JupyterHub service."

    config_file = Unicode("", help="A Python traitlets config file to load.", config=True)
    environments_root = Unicode(
        "/opt/jhub-broker/environments", config=True,
        help="Directory holding every environment's builds; must be readable (not writable) by users.")
    jupyter_data_dir = Unicode(
        "", config=True,
        help="Jupyter data dir whose kernels/ gets a kernelspec per published environment. "
             "Users' servers must have it on JUPYTER_PATH. Default: <environments_root>/.jupyter")
    db_url = Unicode("", config=True,
                     help="SQLAlchemy URL of the service's state. Default: SQLite in <environments_root>/.state/.")
    pythons = Dict(
        config=True,
        help="Base interpreters offered for new environments, {'3.11': '/usr/bin/python3'}. They must be "
             "readable by users. Default: /usr/bin/python3 if present.")
    installer = Enum(["auto", "uv", "pip"], "auto", config=True,
                     help="Installer filling environments: uv (fastest, used by 'auto' when present) or pip.")
    keep_builds = Integer(3, config=True, help="Passed builds kept on disk besides the current one.")
    smoke_test_user = Unicode(
        config=True,
        help="Unprivileged user the kernel smoke test runs as when the service runs as root, which also proves "
             "users can read and run each build. Default: 'nobody' when root, else the service's own user.")

    @default("smoke_test_user")
    def _smoke_test_user(self):
        return "nobody" if os.geteuid() == 0 else ""

    build_user = Unicode(
        config=True,
        help="Unprivileged user the installer and packages' build backends (arbitrary code from the index) run as "
             "when the service runs as root. It owns only the build directory being filled and the installer "
             "cache; the finished build is handed back to the service's user. Empty: the service's own user. "
             "Default: 'nobody' when root. The environments root must be traversable by this user.")

    @default("build_user")
    def _build_user(self):
        return "nobody" if os.geteuid() == 0 else ""

    build_env_allow = List(
        Unicode(), list(BUILD_ENV_ALLOW), config=True,
        help="Environment variables of the service that builds (installer, build backends, smoke test) may see, "
             "by name or by prefix ending in '*': proxies, package index and TLS settings. Builds always get "
             "PATH, HOME and LANG; a name containing TOKEN, SECRET, PASSWORD or CRYPT_KEY, or starting with "
             "JUPYTERHUB_, is never passed, even when listed.")
    crypt_key_file = Unicode(
        "", config=True,
        help="File (mode 0600) holding the hub's JUPYTERHUB_CRYPT_KEY, with which the authentication pages encrypt "
             "OAuth secrets for the hub's authenticator. service_config() writes it and passes its path; the key "
             "itself is never in the service's environment (JupyterHub stores that in its database).")

    max_parallel_builds = Integer(1, config=True, help="Builds running at the same time.")
    initial_environments = List(
        Dict(), config=True,
        help="Environments created at start when absent, e.g. [{'name': 'example', 'requirements': ['six'], "
             "'display_name': 'Python 3 (example)'}] (the demo's ready example). "
             "Default: JSON in $JHUB_BROKER_INITIAL_ENVIRONMENTS.")

    @default("initial_environments")
    def _initial_environments(self):
        import json
        return json.loads(os.environ.get("JHUB_BROKER_INITIAL_ENVIRONMENTS") or "[]")
    auth_config_dir = Unicode(
        "", config=True,
        help="Directory (jupyterhub_config.d-style) where the authentication method page writes its generated "
             "config fragment; jhub_broker.configure(c, auth_config_dir=...) loads it. Empty: method changes "
             "are disabled (live settings still work).")
    auth_fragment_name = Unicode("50-jhub-broker-auth.py", config=True,
                                 help="File name of the generated authentication fragment in auth_config_dir.")
    restart_command = List(
        Unicode(), config=True,
        help="Command restarting the hub after a method change, e.g. ['sudo', 'systemctl', 'restart', "
             "'jupyterhub']. It must return once the old hub has stopped. It runs detached from the hub and "
             "without the hub's secrets in its environment (no JUPYTERHUB_CRYPT_KEY): the hub it starts must get "
             "them from its own definition, as a systemd unit's Environment=/EnvironmentFile= does. "
             "Empty: the fragment is written and validated, and the page asks for a manual restart. "
             "Default: JSON in $JHUB_BROKER_RESTART_COMMAND (jhub_broker.configure sets it).")
    @default("restart_command")
    def _restart_command(self):
        import json
        return json.loads(os.environ.get("JHUB_BROKER_RESTART_COMMAND") or "[]")

    hub_check_url = Unicode(config=True, help="URL answering 200 when the hub is up after a restart "
                                              "(default: $JUPYTERHUB_API_URL/).")

    @default("hub_check_url")
    def _hub_check_url(self):
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api").rstrip("/") + "/"

    restart_timeout = Integer(120, config=True,
                              help="Seconds to wait for the hub to answer after a restart before rolling back.")
    auth_keep_backups = Integer(10, config=True, help="Timestamped backups of the auth fragment to keep.")
    config_admin_users = List(
        Unicode(), config=True,
        help="Admins set in jupyterhub_config.py (Authenticator.admin_users): the page cannot remove them. "
             "Default: JSON in $JHUB_BROKER_CONFIG_ADMINS (jhub_broker.configure sets it).")

    @default("config_admin_users")
    def _config_admin_users(self):
        import json
        return json.loads(os.environ.get("JHUB_BROKER_CONFIG_ADMINS") or "[]")

    service_url = Unicode(config=True, help="URL to listen on (default: $JUPYTERHUB_SERVICE_URL).")
    service_prefix = Unicode(config=True, help="URL prefix (default: $JUPYTERHUB_SERVICE_PREFIX).")

    aliases = {"config": "BrokerService.config_file", "root": "BrokerService.environments_root",
               "db-url": "BrokerService.db_url"}

    @default("service_url")
    def _service_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    @default("service_prefix")
    def _service_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/broker/")

    @default("pythons")
    def _pythons(self):
        out = {}
        for p in ("/usr/bin/python3",):
            if os.path.exists(p):
                v = python_version(p)
                if v:
                    out[v] = p
        return out or {"%d.%d" % sys.version_info[:2]: sys.executable}

    def initialize(self, argv=None):
        self.parse_command_line(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            self.parse_command_line(argv)  # the command line wins
        root = os.path.abspath(self.environments_root)
        data_dir = self.jupyter_data_dir or os.path.join(root, ".jupyter")
        os.makedirs(root, exist_ok=True)
        os.chmod(root, 0o755)
        os.makedirs(data_dir, mode=0o755, exist_ok=True)
        os.chmod(data_dir, 0o755)
        if self.crypt_key_file:
            from ..authenticator.secrets import KEY_FILE_ENV
            # a path, not the key: the secrets module and the fragment validator (a child) read the file
            os.environ[KEY_FILE_ENV] = os.path.abspath(self.crypt_key_file)
        db_url = self.db_url
        if not db_url:
            state = os.path.join(root, ".state")
            os.makedirs(state, mode=0o700, exist_ok=True)
            os.chmod(state, 0o700)
            db_path = os.path.join(state, "broker.sqlite")
            # SQLite gives its journal files the database file's mode
            os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(db_path, 0o600)
            db_url = "sqlite:///" + db_path
        self.db_url_resolved = db_url
        self.session_factory = make_session_factory(db_url)
        self.manager = EnvironmentManager(self.session_factory, root, os.path.join(data_dir, "kernels"),
                                          self.pythons, installer=self.installer, keep_builds=self.keep_builds,
                                          max_parallel_builds=self.max_parallel_builds,
                                          smoke_user=self.smoke_test_user or None,
                                          build_user=self.build_user or None,
                                          build_env_allow=self.build_env_allow)
        self._recover()

    def _recover(self):
        """Builds interrupted by a restart are failed (their dirs removed); the current build stays."""
        import shutil
        from .db import Build, utcnow
        from sqlalchemy import select
        db = self.manager.db
        for b in db.scalars(select(Build).where(Build.status.in_(("queued", "building", "testing")))):
            shutil.rmtree(self.manager.build_dir(b.environment.name, b.number), ignore_errors=True)
            b.status, b.finished = "failed", utcnow()
        db.commit()

    def make_app(self):
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
        env.filters["bytes"] = _human_bytes
        prefix = self.service_prefix
        if not prefix.endswith("/"):
            prefix += "/"

        def render(name, **ns):
            return env.get_template(name).render(**ns)

        routes = h.routes(prefix) + authadmin_routes(prefix)
        hub_prefix = os.environ.get("JUPYTERHUB_BASE_URL", "/")
        # every page, error pages included, gets the navigation's links
        env.globals.update(prefix=prefix, hub_home=url_path_join(hub_prefix, "hub/home"),
                           hub_logout=url_path_join(hub_prefix, "hub/logout"))
        fragment = os.path.join(self.auth_config_dir, self.auth_fragment_name) if self.auth_config_dir else ""
        applier = MethodApplier(fragment, self.restart_command, self.hub_check_url, self.db_url_resolved,
                                timeout=self.restart_timeout, keep_backups=self.auth_keep_backups, log=self.log,
                                login_url=self.hub_login_url, helper_cgroup=self.restart_helper_cgroup)
        return web.Application(
            routes, manager=self.manager, service_prefix=prefix, render=render, xsrf_cookies=True,
            hub_api=HubAPI(), method_applier=applier, config_admins=list(self.config_admin_users),
            allow_insecure_login_methods=self.allow_insecure_login_methods,
            cookie_secret=os.urandom(32), static_path=os.path.join(TEMPLATES, "static"),
            static_url_prefix=url_path_join(prefix, "static/"), hub_home=url_path_join(hub_prefix, "hub/home"))

    def start(self):
        async def run():
            app = self.make_app()
            u = urlparse(self.service_url)
            app.listen(u.port, u.hostname or "127.0.0.1", xheaders=True)
            self.log.info("broker service on %s, prefix %s, installer %s", self.service_url,
                          self.service_prefix, self.manager.installer)
            self._create_initial()
            await asyncio.Event().wait()

        asyncio.run(run())

    def _create_initial(self):
        from .db import env_by_name
        for spec in self.initial_environments:
            if env_by_name(self.manager.db, spec.get("name", "")) is None:
                try:
                    self.manager.create("jhub-broker", spec.get("name", ""), python=spec.get("python"),
                                        requirements=spec.get("requirements", []),
                                        display_name=spec.get("display_name"))
                except Exception as e:
                    self.log.error("initial environment %s: %s", spec.get("name"), e)


def _human_bytes(n):
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def main(argv=None):
    app = BrokerService.instance()
    app.initialize(argv)
    app.start()
