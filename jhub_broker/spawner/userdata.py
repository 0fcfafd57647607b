"""Render the cloud-init user_data that boots a notebook server on a VM."""
import base64
import json
import os

import jinja2

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "templates")
AGENT_PATH = os.path.join(os.path.dirname(__file__), "vm_agent.py")

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


def build_context(*, hub_user, server_name, vm_user, bootstrap, volume_id, mount_point,
                  singleuser_venv, install_packages):
    with open(AGENT_PATH) as f:
        agent = f.read()
    return {
        "hub_user": hub_user,
        "server_name": server_name,
        "vm_user": vm_user,
        "volume_device": volume_device(volume_id) if volume_id else None,
        "mount_point": mount_point,
        "bootstrap_b64": b64(json.dumps(bootstrap)),
        "agent_b64": b64(agent),
        "install_command": INSTALL_COMMAND.format(venv=singleuser_venv, packages=install_packages),
    }
