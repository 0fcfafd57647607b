"""Render the cloud-init user_data that boots a notebook server on a VM."""
import base64
import gzip
import json
import os

import jinja2

from . import vm_agent

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "templates")
AGENT_PATH = os.path.join(os.path.dirname(__file__), "vm_agent.py")
ENVIRONMENTS_SRC = os.path.join(os.path.dirname(os.path.dirname(__file__)), "services", "environments")

# Where the VM gets the broker's environment sync code: the very modules the service builds with, written
# by cloud-init under a package tree of their own (stub __init__ files), so ``python -m
# jhub_broker.services.environments.sync`` runs there without jhub_broker (or its service deps) installed.
VM_PKG_DIR = "/var/lib/jhub-broker/pkg"
SYNC_MODULES = ("sync", "builder", "kernels", "smoke", "validation")

# The S3 credential_process helper (CheckinAuthenticator's named AWS profiles): the hub's own
# ``jhub-broker-s3-credentials`` (stdlib only), written by cloud-init as an executable script; the VM
# agent puts its directory first on the notebook's PATH and writes the AWS config that names it.
S3_HELPER_SRC = os.path.join(os.path.dirname(os.path.dirname(__file__)), "authenticator", "s3", "cli.py")
VM_BIN_DIR = vm_agent.S3_HELPER_DIR  # where the agent looks for it
S3_HELPER_NAME = os.path.basename(vm_agent.S3_HELPER)

# Install jupyterhub-singleuser when the image does not have it (a plain Ubuntu
# cloud image); pre-baked images skip this in well under a second.
INSTALL_COMMAND = (
    "test -x {venv}/bin/jupyterhub-singleuser || "
    "(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; "
    "python3 -m venv {venv} && {venv}/bin/pip install -q {packages})"
)


def volume_device(volume_id):
    """The stable device path a KVM guest sees for a Cinder volume."""
    return f"/dev/disk/by-id/virtio-{volume_id[:20]}"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def render_user_data(*, template_path=None, template_string=None, context):
    """Render the template with ``context``; every value is inserted YAML-safely via ``tojson``."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader([TEMPLATES]), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    if template_string:
        template = env.from_string(template_string)
    elif template_path:
        with open(template_path) as f:
            template = env.from_string(f.read())
    else:
        template = env.get_template("openstack/user_data.yaml.j2")
    return template.render(**context)


def gz_b64(text):
    """cloud-init's ``gz+b64`` write_files encoding (mtime 0: the same source gives the same user_data)."""
    return base64.b64encode(gzip.compress(text.encode(), compresslevel=9, mtime=0)).decode()


def sync_package_files(pkg_dir=VM_PKG_DIR):
    """write_files entries ({path, content} gz+b64) of the sync code for the VM."""
    files = []
    for stub in ("jhub_broker", "jhub_broker/services", "jhub_broker/services/environments"):
        files.append({"path": f"{pkg_dir}/{stub}/__init__.py", "content": gz_b64('"""Shipped by jhub_broker."""\n')})
    for name in SYNC_MODULES:
        with open(os.path.join(ENVIRONMENTS_SRC, name + ".py")) as f:
            files.append({"path": f"{pkg_dir}/jhub_broker/services/environments/{name}.py", "content": gz_b64(f.read())})
    return files


def s3_helper_files(bin_dir=VM_BIN_DIR):
    """write_files entry of the S3 credential_process helper for the VM (mode 0755)."""
    with open(S3_HELPER_SRC) as f:
        source = f.read()
    return [{"path": f"{bin_dir}/{S3_HELPER_NAME}", "content": gz_b64("#!/usr/bin/env python3\n" + source),
             "permissions": "0755"}]


def build_context(*, hub_user, server_name, vm_user, bootstrap, volume_id, mount_point,
                  singleuser_venv, install_packages, sync_code=False, s3_helper=False):
    with open(AGENT_PATH) as f:
        agent = f.read()
    return {
        "extra_files": (sync_package_files() if sync_code else []) + (s3_helper_files() if s3_helper else []),
        "hub_user": hub_user,
        "server_name": server_name,
        "vm_user": vm_user,
        "volume_device": volume_device(volume_id) if volume_id else None,
        "mount_point": mount_point,
        "bootstrap_b64": b64(json.dumps(bootstrap)),
        "agent_b64": b64(agent),
        "install_command": INSTALL_COMMAND.format(venv=singleuser_venv, packages=install_packages),
    }
