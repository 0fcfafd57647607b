"""Assemble the services into one tornado application and run it."""
import importlib
import logging
import os

import yaml
from tornado import httpserver, web

from . import admin, keystone
from .cloud import Cloud, CloudConfig
from .faults import Faults
from .web import NotFoundHandler

log = logging.getLogger("jhub_broker.cloud")

# service modules and the URL prefix each owns
SERVICE_MODULES = [("nova", "/compute", "compute"), ("neutron", "/network", "network"),
                   ("glance", "/image", "image"), ("cinder", "/volume", "volume")]


def make_app(cloud):
    handlers = []
    handlers += keystone.routes(cloud)
    for modname, prefix, service in SERVICE_MODULES:
        try:
            mod = importlib.import_module(f"{__package__}.{modname}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{modname}":
                raise
            log.warning("service %s not available", modname)
            continue
        handlers += mod.routes(cloud)
        handlers.append((rf"{prefix}(/.*)?", NotFoundHandler, {"cloud": cloud, "service": service}))
    handlers += admin.routes(cloud)
    handlers.append((r".*", NotFoundHandler, {"cloud": cloud, "service": "identity"}))
    return web.Application(handlers, default_handler_class=NotFoundHandler,
                           default_handler_args={"cloud": cloud})


def write_clouds_yaml(cloud, path, cloud_name="local"):
    """A clouds.yaml the real openstacksdk and CLI use: password and app-cred entries."""
    project = cloud.default_project
    clouds = {}
    for u in cloud.config["users"]:
        user = cloud.user_by_name(u["name"])
        name = cloud_name if u is cloud.config["users"][0] else f"{cloud_name}-{u['name']}"
        clouds[name] = {
            "auth_type": "password",
            "auth": {"auth_url": f"{cloud.base_url}/identity/v3", "username": user["name"],
                     "password": user["password"], "project_name": cloud.projects[user["default_project_id"]]["name"],
                     "user_domain_name": cloud.domain["name"], "project_domain_name": cloud.domain["name"]},
            "region_name": cloud.config["region"], "interface": "public", "identity_api_version": 3,
        }
    if not cloud.app_creds:
        cloud.add_application_credential(cloud.config["users"][0]["name"], "jhub-broker")
    for ac in cloud.app_creds.values():
        clouds[f"{cloud_name}-appcred"] = {
            "auth_type": "v3applicationcredential",
            "auth": {"auth_url": f"{cloud.base_url}/identity/v3", "application_credential_id": ac["id"],
                     "application_credential_secret": ac["secret"]},
            "region_name": cloud.config["region"], "interface": "public", "identity_api_version": 3,
        }
        break
    del project
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"clouds": clouds}, f, sort_keys=False)
    os.replace(tmp, path)
    return path


def start_cloud(state_dir, host="127.0.0.1", port=0, config_path=None, overrides=None, cloud_name="local"):
    """Start the cloud on the running event loop; returns (cloud, http_server)."""
    os.makedirs(state_dir, exist_ok=True)
    if config_path is None and os.path.exists(os.path.join(state_dir, "cloud.yaml")):
        config_path = os.path.join(state_dir, "cloud.yaml")
    config = CloudConfig.load(config_path, overrides)
    cloud = Cloud(config, state_dir=state_dir)
    cloud.faults = Faults(config.get("faults"))
    app = make_app(cloud)
    server = httpserver.HTTPServer(app, xheaders=False)
    sockets = __import__("tornado.netutil", fromlist=["bind_sockets"]).bind_sockets(port, host)
    server.add_sockets(sockets)
    real_port = sockets[0].getsockname()[1]
    cloud.base_url = f"http://{host}:{real_port}"
    if config["vm"].get("enabled", True):
        try:
            from .vm.runner import VMRunner
        except ModuleNotFoundError:
            VMRunner = None
        if VMRunner is not None:
            cloud.vm_runner = VMRunner(cloud, os.path.join(state_dir, "vms"))
    write_clouds_yaml(cloud, os.path.join(state_dir, "clouds.yaml"), cloud_name)
    secret_path = os.path.join(state_dir, "admin-secret")
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(cloud.admin_secret)
    with open(os.path.join(state_dir, "endpoint"), "w") as f:
        f.write(cloud.base_url + "\n")
    return cloud, server
