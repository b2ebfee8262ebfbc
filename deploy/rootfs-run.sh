#!/usr/bin/env bash
# Runs the entrypoint of a root filesystem built by deploy/rootfs.sh the way a container runtime
# would: in its own PID namespace (node is PID 1), its own mount namespace (/proc, /dev),
# chrooted, as the non-root user 10001, with the image's environment. Run it inside a network
# namespace (`ip netns exec POD deploy/rootfs-run.sh ...`) to give it the pod's network.
# Differences from a real runtime: no cgroup limits, no seccomp profile, no user namespace, the
# host's /dev is bind-mounted whole, and the root filesystem is writable.
#
# usage: deploy/rootfs-run.sh ROOTFS [--exec CMD...] | [meshproxy flags...]
set -euo pipefail
rootfs=$(cd "${1:?usage: deploy/rootfs-run.sh ROOTFS [flags...]}" && pwd)
shift
if [ "${1:-}" = "--exec" ]; then
  shift
  cmd=("$@")
else
  cmd=(/usr/local/bin/node /app/node_modules/meshproxy/dist/cli/main.js -log-json -log-dest stdout "$@")
fi
exec unshare --pid --fork --kill-child --mount --propagation private -- /bin/sh -c '
  set -e
  r=$1; shift
  mount -t proc proc "$r/proc"
  mount --rbind /dev "$r/dev"
  # The image preloads jemalloc (Dockerfile). LD_PRELOAD is read by chroot, a host binary, before
  # node in the root: it names the library at a path both have (Debian'"'"'s libjemalloc2 on the host
  # too, which .ci/run installs); without it on either side this runs on glibc'"'"'s malloc.
  preload=
  lib=/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2
  [ -e "$r$lib" ] && [ -e "$lib" ] && preload=LD_PRELOAD=$lib
  exec env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/var/lib/meshproxy MESHPROXY_DATA_DIR=/var/lib/meshproxy NODE_ENV=production \
    $preload ${MESHPROXY_ENV:-} chroot --userspec=10001:10001 "$r" "$@"
' rootfs-run "$rootfs" "${cmd[@]}"
