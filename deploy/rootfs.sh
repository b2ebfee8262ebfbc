#!/usr/bin/env bash
# Builds the sidecar image's layout as a plain root filesystem, for machines with no container
# engine (and for the tests, which run it with deploy/rootfs-run.sh):
#   /usr/local/bin/node                  Node (NODE=..., default the node on PATH)
#   /lib, /lib64, /usr/lib/...           glibc, libstdc++, libgcc_s, libjemalloc from Debian's packages
#   /usr/local/lib/libjemalloc.so.2      the allocator the image preloads (LD_PRELOAD)
#   /app/node_modules/meshproxy          the `npm pack` tarball, installed with --omit=dev
#   /etc/passwd, /etc/group              the non-root user meshproxy (10001:10001)
#   /var/lib/meshproxy                   its state directory (MESHPROXY_DATA_DIR)
# Same paths, user and entrypoint as the Dockerfile's final stage.
#
# usage: deploy/rootfs.sh OUT_DIR [TARBALL]   (TARBALL: an existing `npm pack` output; default: pack this checkout)
set -euo pipefail
out=${1:?usage: deploy/rootfs.sh OUT_DIR [TARBALL]}
tarball=${2:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
node_bin=${NODE:-$(command -v node)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$out"
out=$(cd "$out" && pwd)
mkdir -p "$out"/{app,etc,proc,dev,sys,tmp,usr/local/bin,var/lib/meshproxy}
chmod 1777 "$out/tmp"

# 1. The C and C++ runtimes node links against, unpacked from Debian's packages (what the
#    node:24-bookworm-slim base image is made of). Without package lists (no apt-get update),
#    the host's own copies of the same libraries are used instead.
#    libjemalloc2 too: the image preloads it as the allocator (Dockerfile).
jemalloc=/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2
if (cd "$work" && apt-get download libc6 libgcc-s1 libstdc++6 libjemalloc2 >/dev/null 2>&1); then
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$out"; done
else
  echo "rootfs: apt-get download failed; copying the host's libraries that $node_bin links against" >&2
  for lib in $(ldd "$node_bin" | grep -oE '/[^ ]+') $( [ -e "$jemalloc" ] && echo "$jemalloc" ); do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
  done
fi
mkdir -p "$out/usr/local/lib"
if [ -e "$out$jemalloc" ]; then
  ln -sf "$jemalloc" "$out/usr/local/lib/libjemalloc.so.2"
else
  echo "rootfs: no libjemalloc2 (neither from Debian's packages nor on this host): the root filesystem runs on glibc's malloc" >&2
fi
# usrmerge: Debian 12 packages ship /lib/..., the loader path is /lib64/ld-linux-x86-64.so.2.
[ -e "$out/lib64" ] || ln -s lib "$out/lib64" 2>/dev/null || true
cp -L "$node_bin" "$out/usr/local/bin/node"

# 2. meshproxy: the packed tarball (exactly what the npm registry would serve), production
#    dependencies only.
if [ -z "$tarball" ]; then
  (cd "$repo" && npm pack --silent --ignore-scripts --pack-destination "$work" >/dev/null)
  tarball=$(ls "$work"/meshproxy-*.tgz)
fi
(cd "$out/app" && printf '{"name":"meshproxy-image","private":true}\n' > package.json \
  && npm install --silent --omit=dev --no-audit --no-fund --prefer-offline "$tarball" >/dev/null)

# 3. The non-root user, and its state directory.
cat > "$out/etc/passwd" <<'P'
root:x:0:0:root:/root:/usr/sbin/nologin
meshproxy:x:10001:10001:meshproxy:/var/lib/meshproxy:/usr/sbin/nologin
P
cat > "$out/etc/group" <<'G'
root:x:0:
meshproxy:x:10001:
G
echo "hosts: files" > "$out/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$out/etc/hosts"
chown 10001:10001 "$out/var/lib/meshproxy"
chmod 0750 "$out/var/lib/meshproxy"
echo "$out"
