#!/usr/bin/env bash
# Make a Python base image without pulling from any registry: debootstrap Debian bookworm
# (Python 3.11, as python:3.11-slim) into a folder and `docker import` it. For the tests and
# for machines that cannot reach Docker Hub. Usage: scripts/base-image.sh [NAME:TAG]
set -euo pipefail
name="${1:-mlops-iac-test/python:3.11-bookworm}"
if docker image inspect "$name" >/dev/null 2>&1; then
    echo "$name exists"
    exit 0
fi
mirror="$( (grep -rhoE 'https?://deb\.debian\.org/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true) | head -n 1)"
mirror="${mirror:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d /tmp/mlops-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import - "$name" >/dev/null
echo "$name imported"
