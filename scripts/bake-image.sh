#!/bin/sh
# "Bake" the local cloud's pre-baked image: a venv with jupyterhub-singleuser that
# VMs of images with jhub_broker_prebaked=true see (read-only) at /opt/jhub-broker/singleuser.
# packaging, virtualenv and uv are what the VM agent's environment sync (the broker's builder code,
# OpenStackSpawner.environments_service_url) needs; without them the VM installs them at boot.
# boto3 and s3fs are what notebooks use to reach the S3 buckets the Check-in groups grant
# (CheckinAuthenticator.s3_grants; credentials from the hub, see docs/authenticator.md); s3fs
# with a floor, else pip keeps the newest boto3 and falls back to s3fs 0.4 (before aiobotocore).
# Idempotent: re-running only installs what is missing.
#   usage: scripts/bake-image.sh [VENV_DIR]   (default /opt/jhub-broker/singleuser)
set -eu
VENV=${1:-/opt/jhub-broker/singleuser}
PY=/usr/bin/python3   # Debian's python: the one VMs have, readable by every user
PACKAGES="jupyterhub==6.1.1 jupyter-server notebook ipykernel packaging virtualenv uv boto3 s3fs>=2024.3"

if ! [ -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import jupyterhub, jupyter_server, notebook, ipykernel, packaging, virtualenv, uv, boto3, s3fs, aiobotocore, sys; sys.exit(jupyterhub.__version__ != "6.1.1")' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet $PACKAGES
fi
# readable and runnable by unprivileged users (VM users are not root)
chmod -R a+rX "$(dirname "$VENV")"
if command -v runuser >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u nobody -- "$VENV/bin/jupyterhub-singleuser" --help >/dev/null)
fi
echo "pre-baked venv ready: $VENV ($("$VENV/bin/python" -c 'import jupyterhub; print("jupyterhub", jupyterhub.__version__)'))"
