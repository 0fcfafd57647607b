#!/usr/bin/env bash
# Installs everything jhub_broker's demo and tests need on a fresh Debian 12 machine.
# Idempotent and quick when nothing changed.  Run as root (or with sudo for apt).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- Debian packages ---------------------------------------------------------------
# package:command -- a package counts as present when dpkg knows it or its command exists
# (e.g. NodeSource's nodejs ships npm, and conflicts with Debian's npm package)
debs=(bubblewrap:bwrap cloud-init:cloud-init python3:python3 python3-venv: gcc:gcc nodejs:node npm:npm chromium:chromium
      postgresql:pg_ctlcluster docker.io:dockerd debootstrap:debootstrap)
missing=()
for entry in "${debs[@]}"; do
  p=${entry%%:*} c=${entry#*:}
  dpkg -s "$p" >/dev/null 2>&1 && continue
  [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && continue
  missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # cloud-init must not run on this host at boot: it is only used inside the local cloud's VMs
  $SUDO systemctl disable cloud-init cloud-init-local cloud-config cloud-final >/dev/null 2>&1 || true
  # nor dockerd: the local cloud's docker-host VMs run their own (docs/local-cloud.md)
  case " ${missing[*]} " in *" docker.io "*)
    $SUDO systemctl disable --now docker.service docker.socket containerd.service >/dev/null 2>&1 || true ;;
  esac
fi

# --- the project's Python environment -------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
stamp=.venv/.jhub-broker-installed
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "pip install -e .[test]"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi

# --- Node parts: configurable-http-proxy (and the Check-in stand-in) ------------------------
if [ ! -x share/node/node_modules/.bin/configurable-http-proxy ] || [ share/node/package.json -nt share/node/node_modules ]; then
  log "npm install (share/node)"
  (cd share/node && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  touch share/node/node_modules
fi

# --- the local cloud's pre-baked image: jupyterhub-singleuser readable by unprivileged users ---
if [ -x scripts/bake-image.sh ]; then
  scripts/bake-image.sh
fi
# --- the container image docker-host VMs import (debootstrap + that venv; cached) ---------------
if [ -x scripts/bake-container-image.sh ]; then
  scripts/bake-container-image.sh
fi
log "ready"
