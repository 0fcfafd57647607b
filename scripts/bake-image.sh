#!/bin/sh
# "Bake" the local cloud's pre-baked image: a venv with jupyterhub-singleuser that
# VMs of images with jhub_broker_prebaked=true see (read-only) at /opt/jhub-broker/singleuser.
# packaging, virtualenv and uv are what the VM agent's environment sync (the broker's builder code,
# OpenStackSpawner.environments_service_url) needs; without them the VM installs them at boot.
# Idempotent: re-running only installs what is missing.
#   usage: scripts/bake-image.sh [VENV_DIR]   (default /opt/jhub-broker/singleuser)
set -eu
VENV=${1:-/opt/jhub-broker/singleuser}
PY=/usr/bin/python3   # Debian's python: the one VMs have, readable by every user
PACKAGES="jupyterhub==6.1.1 jupyter-server notebook ipykernel packaging virtualenv uv"

if ! [ -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import jupyterhub, jupyter_server, notebook, ipykernel, packaging, virtualenv, uv, sys; sys.exit(jupyterhub.__version__ != "6.1.1")' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet $PACKAGES
fi
# readable and runnable by unprivileged users (VM users are not root)
chmod -R a+rX "$(dirname "$VENV")"
if command -v runuser >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u nobody -- "$VENV/bin/jupyterhub-singleuser" --help >/dev/null)
fi
echo "pre-baked venv ready: $VENV ($("$VENV/bin/python" -c 'import jupyterhub; print("jupyterhub", jupyterhub.__version__)'))"
