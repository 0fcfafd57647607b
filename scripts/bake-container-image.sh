#!/bin/sh
# Bake the local cloud's container images without a registry, from one minimal Debian root (debootstrap
# --variant=minbase + python3, a user jovyan with uid 1000), as root file system tarballs that a
# docker-host VM imports (it sees /opt/jhub-broker/container-images read-only; docs/local-cloud.md):
#   jhub-base.tar         that root alone (~9k files): imports in a few seconds; containers get the VM's
#                         read-only venv with  -v /opt/jhub-broker/singleuser:/opt/jhub-broker/singleuser:ro
#   jhub-singleuser.tar   that root plus the single-user venv of scripts/bake-image.sh at the same path
#                         (~40k files): self-contained like a real notebook image, slower to import and
#                         to delete with its host
#   e.g. docker import /opt/jhub-broker/container-images/jhub-base.tar jhub-base
# Cached: rebuilt only when this script or the venv's packages change (a stamp beside the tarballs);
# the downloaded .debs are kept in /var/cache/jhub-broker/debootstrap, so a rebuild does not fetch them again.
#   usage: scripts/bake-container-image.sh [OUT_DIR]   (default /opt/jhub-broker/container-images)
set -eu
OUT=${1:-/opt/jhub-broker/container-images}
VENV=/opt/jhub-broker/singleuser
NAME=jhub-singleuser
BASE=jhub-base
SUITE=bookworm
CACHE=/var/cache/jhub-broker/debootstrap

[ -x "$VENV/bin/python" ] || { echo "no venv at $VENV: run scripts/bake-image.sh first" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
want=$( (cat "$0"; "$VENV/bin/python" -m pip freeze --all 2>/dev/null) | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/$NAME.tar" ] && [ -f "$OUT/$BASE.tar" ] && [ "$(cat "$OUT/$NAME.stamp" 2>/dev/null)" = "$want" ]; then
    echo "container images ready: $OUT/$BASE.tar $OUT/$NAME.tar (cached)"
    exit 0
fi

mkdir -p "$OUT" "$CACHE"
work=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
debootstrap --variant=minbase --include=python3,ca-certificates --cache-dir="$CACHE" "$SUITE" "$root" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
chroot "$root" useradd --create-home --uid 1000 --shell /bin/bash jovyan
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/dev/*
mkdir -p "$root$(dirname "$VENV")"
tar --numeric-owner -C "$root" -cf "$work/$BASE.tar" .
cp -a "$VENV" "$root$VENV"
tar --numeric-owner -C "$root" -cf "$work/$NAME.tar" .
chmod 0644 "$work/$BASE.tar" "$work/$NAME.tar"
mv "$work/$BASE.tar" "$OUT/$BASE.tar"
mv "$work/$NAME.tar" "$OUT/$NAME.tar"
echo "$want" > "$OUT/$NAME.stamp"
chmod 0755 "$OUT"
echo "container images ready: $OUT/$BASE.tar ($(du -h "$OUT/$BASE.tar" | cut -f1)), $OUT/$NAME.tar ($(du -h "$OUT/$NAME.tar" | cut -f1))"
