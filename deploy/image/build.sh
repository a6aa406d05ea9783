#!/usr/bin/env bash
# `make image`: build the picker's image with buildah where no container registry is reachable.
#
# The base is Debian bookworm's own python3 (3.11), made into an image from a root filesystem
# that debootstrap assembles from Debian packages, once (kept as $BASE in local storage); the
# project and its dependencies go in as wheels built here with pip. Then deploy/image/Dockerfile
# builds as it does with docker. Needs root, debootstrap, buildah, podman (apt-get install).
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
VERSION=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("llm-picker"))')
IMAGE=${IMAGE:-localhost/llm-picker:$VERSION}
BASE=${BASE:-localhost/llm-picker-base:bookworm}
EXTRAS=${EXTRAS:-kubernetes}

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" >/dev/null
    # What a Python process never reads: package caches and lists, documentation, locales.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
    tar -C "$rootfs" -c . | podman import --quiet - "$BASE" >/dev/null
    echo "base image $BASE made from Debian packages (debootstrap)"
fi

rm -rf build/image/wheels
"$PYTHON" -m pip wheel --quiet --wheel-dir build/image/wheels ".[$EXTRAS]"
# chroot isolation: RUN steps need no OCI runtime (crun refuses this host's hybrid cgroups).
buildah build --quiet --layers --isolation chroot -f deploy/image/Dockerfile --build-arg "BASE=$BASE" \
    --build-arg "EXTRAS=$EXTRAS" -t "$IMAGE" . >/dev/null
echo "built $IMAGE (extras: $EXTRAS)"
