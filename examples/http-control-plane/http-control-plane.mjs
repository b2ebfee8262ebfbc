// A third-party control plane: meshproxy fed by an HTTP endpoint of your own.
//
// It polls a URL that returns the proxy's whole configuration as JSON (certificates included),
// turns it into a Snapshot, and hands it to the proxy. Failures are reported through
// handlers.error; the proxy keeps serving on the last good Snapshot. Everything it needs from
// meshproxy comes from the public package API.
import { X509Certificate } from "node:crypto";
import { request } from "undici";
import { ControlPlaneError, DEFAULTS, serialOf, serviceSni, serviceSpiffeId } from "meshproxy";

function hostPort(s) {
  const i = s.lastIndexOf(":");
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

/**
 * The document served at `url`:
 * { "service": "web", "datacenter": "dc1", "cert_pem": "...", "key_pem": "...", "roots_pem": ["..."],
 *   "public_listener": { "bind": "127.0.0.1:0", "local_app": "127.0.0.1:8080" },
 *   "upstreams": [ { "name": "db", "bind": "127.0.0.1:0", "endpoints": ["127.0.0.1:21001"] } ],
 *   "intentions": { "default_action": "allow", "intentions": [] } }
 */
export function toSnapshot(doc, version) {
  const leaf = new X509Certificate(doc.cert_pem);
  const uri = /URI:([^,]+)/.exec(leaf.subjectAltName ?? "")?.[1] ?? "";
  const trustDomain = new URL(uri).host;
  const datacenter = doc.datacenter ?? DEFAULTS.datacenter;
  const namespace = DEFAULTS.namespace;
  const clusters = {};
  for (const u of doc.upstreams ?? []) {
    clusters[u.name] = {
      name: u.name,
      service: u.name,
      namespace,
      datacenter,
      sni: serviceSni(u.name, namespace, datacenter, trustDomain),
      expectedSpiffeId: serviceSpiffeId({ trustDomain, namespace, datacenter, service: u.name }),
      endpoints: u.endpoints.map((e) => ({ ...hostPort(e), id: e, healthy: true, meta: {} })),
    };
  }
  const pl = doc.public_listener;
  return {
    version,
    source: "http-example",
    identity: {
      service: doc.service,
      namespace,
      datacenter,
      trustDomain,
      spiffeId: uri,
      certChainPem: doc.cert_pem,
      privateKeyPem: doc.key_pem,
      serial: serialOf(doc.cert_pem),
      notBefore: new Date(leaf.validFrom),
      notAfter: new Date(leaf.validTo),
    },
    trust: { trustDomain, rootsPem: doc.roots_pem },
    publicListener: pl
      ? {
          bind: hostPort(pl.bind),
          localApp: hostPort(pl.local_app),
          protocol: "tcp",
          handshakeTimeoutMs: DEFAULTS.handshakeTimeoutMs,
          localConnectTimeoutMs: DEFAULTS.localConnectTimeoutMs,
          idleTimeoutMs: DEFAULTS.idleTimeoutMs,
        }
      : null,
    upstreams: (doc.upstreams ?? []).map((u) => ({
      name: u.name,
      bind: hostPort(u.bind),
      cluster: u.name,
      protocol: "tcp",
      connectTimeoutMs: DEFAULTS.upstreamConnectTimeoutMs,
      idleTimeoutMs: DEFAULTS.idleTimeoutMs,
    })),
    clusters,
    intentions: {
      defaultAction: doc.intentions?.default_action ?? "allow",
      intentions: doc.intentions?.intentions ?? [],
    },
  };
}

export class HttpControlPlane {
  kind = "http-example";
  #url;
  #pollMs;
  #timer = null;
  #etag = "";
  #version = 0;

  constructor({ url, pollMs = 2000 }) {
    this.#url = url;
    this.#pollMs = pollMs;
  }

  async #fetch(handlers) {
    const res = await request(this.#url, { headers: this.#etag ? { "if-none-match": this.#etag } : {} });
    if (res.statusCode === 304) return res.body.dump();
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new Error(`GET ${this.#url}: HTTP ${res.statusCode}`);
    }
    const doc = await res.body.json();
    this.#etag = String(res.headers["etag"] ?? "");
    handlers.snapshot(toSnapshot(doc, ++this.#version));
  }

  async start(handlers) {
    try {
      await this.#fetch(handlers);
    } catch (e) {
      throw new ControlPlaneError("http-example", e.message, true);
    }
    const poll = async () => {
      try {
        await this.#fetch(handlers);
      } catch (e) {
        handlers.error(new ControlPlaneError("http-example", e.message));
      }
      this.#timer = setTimeout(poll, this.#pollMs);
      this.#timer.unref();
    };
    this.#timer = setTimeout(poll, this.#pollMs);
    this.#timer.unref();
  }

  async announce() {}
  async withdraw() {}
  async stop() {
    clearTimeout(this.#timer);
  }
}
