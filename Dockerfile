# meshproxy as a sidecar container.
#
#   docker build -t meshproxy .
#   docker run --network container:<app> -e CONSUL_HTTP_ADDR=127.0.0.1:8500 meshproxy \
#     -sidecar-for web -admin-addr 127.0.0.1:19000
#
# Node 24: the benchmark's choice (bench/RESULTS.md: 10-23 % less proxy CPU per L4 request, new
# mTLS connection and GiB than Node 20, L7 even; Node 20 is past end of life), at the cost of
# 1.45-1.6x the RSS per proxy (README "Run as a sidecar container"). deploy/rootfs.sh builds the same layout
# (same paths, user, entrypoint) as a plain directory, which is what the tests run.

FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --ignore-scripts
COPY src ./src
RUN npx tsc -p tsconfig.json && npm pack --ignore-scripts --pack-destination /tmp \
 && mkdir /app && cd /app && npm init -y >/dev/null \
 && npm install --omit=dev --no-audit --no-fund /tmp/meshproxy-*.tgz

FROM node:24-bookworm-slim
# jemalloc as the allocator: with glibc's malloc a sidecar's RSS stays near the level of its last
# spike (a hung app holding a thousand requests, a burst of connections) and creeps up spike after
# spike; jemalloc gives the pages back (bench/SOAK.md, "Is the growth a leak?": 178 MB vs 92 MB
# after six such spikes). Measured cost, 3 rounds (bench/PERF-LOG.md, session 10): CPU per L7
# request 1.02x, per L4 request 1.13x, per new mTLS connection 0.92x; idle RSS +4 MB. Linked
# at an arch-neutral path; a base image that already has the library is not touched.
RUN lib=/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2 \
 && { [ -e "$lib" ] || { apt-get update && apt-get install -y --no-install-recommends libjemalloc2 && rm -rf /var/lib/apt/lists/*; }; } \
 && ln -s "$lib" /usr/local/lib/libjemalloc.so.2
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2
# A fixed numeric uid so volume permissions and Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 meshproxy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/meshproxy --shell /usr/sbin/nologin meshproxy \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/meshproxy
COPY --from=build /app/node_modules /app/node_modules
USER 10001:10001
WORKDIR /var/lib/meshproxy
# The dev control plane's state (its CA, catalog) lives here; Consul mode keeps nothing on disk.
ENV MESHPROXY_DATA_DIR=/var/lib/meshproxy NODE_ENV=production
# V8's young generation grows to 2 x 32 MB on Node 24 under HTTP load (2 x 16 on Node 20) and
# stays committed; capped at 2 x 4 MB the peak RSS under L7 keep-alive falls by ~37 MB (Node 24)
# for ~5 % more CPU per L7 request, L4 unchanged (bench/PERF-LOG.md, 2026-12-02 memory).
# NODE_OPTIONS so that flags given to the image still work; a NODE_OPTIONS of your own replaces it.
ENV NODE_OPTIONS=--max-semi-space-size=4
# Public listener (Consul's default sidecar port), admin API, Prometheus.
EXPOSE 21000 19000 9102
# The same check as the Kubernetes readiness probe: 200 only once listeners are bound and the
# first certificate is in hand, 503 while draining. No curl in the image: node does the GET.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/node", "-e", "fetch('http://127.0.0.1:19000/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# node runs as PID 1 without a shell in between: meshproxy installs its own SIGTERM/SIGINT
# handlers (src/cli/signals.ts), so `docker stop` drains for -drain-timeout, then exits 0.
# Set the runtime's stop timeout (docker --stop-timeout, Kubernetes
# terminationGracePeriodSeconds) above -drain-timeout.
STOPSIGNAL SIGTERM
# Logs: JSON lines on stdout, where container runtimes and log shippers expect them.
ENTRYPOINT ["/usr/local/bin/node", "/app/node_modules/meshproxy/dist/cli/main.js", "-log-json", "-log-dest", "stdout"]
