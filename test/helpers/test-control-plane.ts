// A control plane whose state a test sets (the ControlPlane interface, with addUpstream): this
// service's leaf, the roots, and where api listens, so a test decides exactly when the leaf and
// the roots change.
import {
  issueLeaf,
  serviceSni,
  serviceSpiffeId,
  type Announcement,
  type CaMaterial,
  type ControlPlane,
  type ControlPlaneHandlers,
  type IssuedLeaf,
  type Snapshot,
  type UpstreamRequest,
} from "../../src/index.js";

export const TD = "11111111-2222-3333-4444-555555555555.consul";

export const idOf = (svc: string) => serviceSpiffeId({ trustDomain: TD, namespace: "default", datacenter: "dc1", service: svc });

/** A control plane whose state the test sets: this service's leaf, the roots, where api listens. */
export class TestControlPlane implements ControlPlane {
  readonly kind = "test";
  private handlers: ControlPlaneHandlers | null = null;
  private version = 0;
  private readonly upstreams: UpstreamRequest[] = [];
  announced: Announcement | null = null;
  withdrawn = 0;

  constructor(
    private readonly service: string,
    private leaf: IssuedLeaf,
    private roots: string[],
    private apiPort = 0,
  ) {}

  start(handlers: ControlPlaneHandlers): Promise<void> {
    this.handlers = handlers;
    this.emit();
    return Promise.resolve();
  }

  addUpstream(u: UpstreamRequest): void {
    this.upstreams.push(u);
    this.emit();
  }

  set(change: { leaf?: IssuedLeaf; roots?: string[]; apiPort?: number }): void {
    if (change.leaf) this.leaf = change.leaf;
    if (change.roots) this.roots = change.roots;
    if (change.apiPort !== undefined) this.apiPort = change.apiPort;
    this.emit();
  }

  private emit(): void {
    const sni = serviceSni("api", "default", "dc1", TD);
    const s: Snapshot = {
      version: ++this.version,
      source: this.kind,
      identity: {
        service: this.service,
        namespace: "default",
        datacenter: "dc1",
        trustDomain: TD,
        spiffeId: idOf(this.service),
        certChainPem: this.leaf.certPem,
        privateKeyPem: this.leaf.keyPem,
        serial: this.leaf.serial,
        notBefore: this.leaf.notBefore,
        notAfter: this.leaf.notAfter,
      },
      trust: { trustDomain: TD, rootsPem: this.roots },
      publicListener: { bind: { host: "127.0.0.1", port: 0 }, localApp: { host: "127.0.0.1", port: 0 }, protocol: "http", handshakeTimeoutMs: 10_000, localConnectTimeoutMs: 1000, idleTimeoutMs: 3_600_000 },
      upstreams: this.upstreams.map((u) => ({ name: u.name, bind: u.bind, cluster: sni, protocol: "tcp", connectTimeoutMs: 5000, idleTimeoutMs: 3_600_000 })),
      clusters:
        this.upstreams.length === 0
          ? {}
          : {
              [sni]: {
                name: sni,
                service: "api",
                namespace: "default",
                datacenter: "dc1",
                sni,
                expectedSpiffeId: idOf("api"),
                endpoints: [{ host: "127.0.0.1", port: this.apiPort, healthy: true, id: "api-1", meta: {} }],
              },
            },
      intentions: { defaultAction: "allow", intentions: [] },
    };
    this.handlers?.snapshot(s);
  }

  announce(a: Announcement): Promise<void> {
    this.announced = a;
    return Promise.resolve();
  }

  withdraw(): Promise<void> {
    this.withdrawn++;
    return Promise.resolve();
  }

  stop(): Promise<void> {
    return Promise.resolve();
  }
}

export async function leaf(ca: CaMaterial, svc: string): Promise<IssuedLeaf> {
  return issueLeaf(ca, { spiffeId: idOf(svc), commonName: svc, ttlMs: 3_600_000 });
}

