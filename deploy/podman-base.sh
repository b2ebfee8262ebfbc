#!/usr/bin/env bash
# A stand-in for the Dockerfile's base image (node:24-bookworm-slim) where no registry of images
# can be reached: Debian 12 from Debian's packages (debootstrap --variant=minbase) plus this
# Node given as NODE (default the node on PATH) and the machine's npm at the official image's paths (/usr/local/bin/node,
# /usr/local/lib/node_modules/npm), imported into podman under the base image's name, so that
# `podman build --pull=never` builds the real Dockerfile unchanged.
#
# usage: deploy/podman-base.sh WORK_DIR [IMAGE_NAME]   (root; needs debootstrap and podman)
set -euo pipefail
work=${1:?usage: deploy/podman-base.sh WORK_DIR [IMAGE_NAME]}
name=${2:-docker.io/library/node:24-bookworm-slim}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
node_bin=${NODE:-$(command -v node)}
npm_dir=${NPM_DIR:-$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")}
base="$work/base"
[ -x "$base/usr/sbin/useradd" ] || debootstrap --variant=minbase --include=libjemalloc2 bookworm "$base" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
# libjemalloc2: the Dockerfile installs it with apt-get, which cannot reach a mirror inside an
# offline build, and leaves a base that has it alone. A base made before it was included gets it
# from the host's apt.
if [ ! -e "$base/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2" ]; then
  (cd "$work" && apt-get download libjemalloc2 >/dev/null) || { echo "podman-base: apt-get download libjemalloc2 failed" >&2; exit 1; }
  dpkg-deb -x "$(ls "$work"/libjemalloc2_*.deb | head -n 1)" "$base"
fi
mkdir -p "$base/usr/local/bin" "$base/usr/local/lib/node_modules"
cp -L "$node_bin" "$base/usr/local/bin/node"
rm -rf "$base/usr/local/lib/node_modules/npm"
cp -a "$npm_dir" "$base/usr/local/lib/node_modules/npm"
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$base/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$base/usr/local/bin/npx"
# npm in the build runs offline from the host's npm cache (mounted by the caller with
# `podman build -v "$(npm config get cache)":/root/.npm`): this machine reaches the npm registry
# only through its own network setup, which a container does not share.
mkdir -p "$base/usr/local/etc"
printf 'offline=true\naudit=false\nfund=false\nupdate-notifier=false\n' > "$base/usr/local/etc/npmrc"
tar -C "$base" -c . | podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["node"]' - "$name" >/dev/null
echo "$name"
