#!/bin/sh
# Bake the local cloud's container image without a registry: a minimal Debian root (debootstrap
# --variant=minbase + python3) with the single-user venv of scripts/bake-image.sh copied in at the same
# path, and a user jovyan (uid 1000).  The result is a root file system tarball that a docker-host VM
# imports:   docker import /opt/jhub-broker/container-images/jhub-singleuser.tar jhub-singleuser
# (VMs of docker-host images see /opt/jhub-broker/container-images read-only; docs/local-cloud.md).
# Cached: rebuilt only when this script or the venv's packages change (a stamp beside the tarball);
# the downloaded .debs are kept in /var/cache/jhub-broker/debootstrap, so a rebuild does not fetch them again.
#   usage: scripts/bake-container-image.sh [OUT_DIR]   (default /opt/jhub-broker/container-images)
set -eu
OUT=${1:-/opt/jhub-broker/container-images}
VENV=/opt/jhub-broker/singleuser
NAME=jhub-singleuser
SUITE=bookworm
CACHE=/var/cache/jhub-broker/debootstrap

[ -x "$VENV/bin/python" ] || { echo "no venv at $VENV: run scripts/bake-image.sh first" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
want=$( (cat "$0"; "$VENV/bin/python" -m pip freeze --all 2>/dev/null) | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/$NAME.tar" ] && [ "$(cat "$OUT/$NAME.stamp" 2>/dev/null)" = "$want" ]; then
    echo "container image ready: $OUT/$NAME.tar (cached)"
    exit 0
fi

mkdir -p "$OUT" "$CACHE"
work=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
debootstrap --variant=minbase --include=python3,ca-certificates --cache-dir="$CACHE" "$SUITE" "$root" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
mkdir -p "$root$(dirname "$VENV")"
cp -a "$VENV" "$root$VENV"
chroot "$root" useradd --create-home --uid 1000 --shell /bin/bash jovyan
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/dev/*
tar --numeric-owner -C "$root" -cf "$work/$NAME.tar" .
chmod 0644 "$work/$NAME.tar"
mv "$work/$NAME.tar" "$OUT/$NAME.tar"
echo "$want" > "$OUT/$NAME.stamp"
chmod 0755 "$OUT"
echo "container image ready: $OUT/$NAME.tar ($(du -h "$OUT/$NAME.tar" | cut -f1))"
