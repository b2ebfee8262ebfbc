// Load balancing over one cluster's hosts, per Envoy's lb_policy semantics
// (shared/reference/data-plane-anchors.md §4). A Balancer is built once per host set (when a
// Snapshot installs endpoints): rings and Maglev tables are computed there, so a pick costs a
// binary search or a table lookup and allocates nothing.
import type { HashPolicy, LoadBalancer } from "../config/http.js";
import type { Endpoint } from "../config/snapshot.js";

export interface HostState {
  readonly endpoint: Endpoint;
  /** `host:port` (see hostKey); identifies the host to exclusion sets and outlier detection. */
  readonly key: string;
  /** Requests in flight to this host; the caller increments on start and decrements on finish. */
  activeRequests: number;
}

export interface PickContext {
  /** 32-bit unsigned request hash, when the route's hash policies produced one (requestHash). */
  readonly hash?: number;
  /** Keys of hosts this request already tried: a retry should go elsewhere. */
  readonly exclude?: ReadonlySet<string>;
}

export interface Balancer {
  /**
   * One host out of `hosts`, or null when `hosts` is empty. `hosts` is the set the caller may use
   * right now (availableHosts): the array given to createBalancer or a subset of it. The result
   * is always an element of `hosts`, hence the type parameter: callers with richer host objects
   * get them back without a cast. Treat these arrays as immutable (pass a new array when the set
   * changes): ring_hash and maglev recognise them by identity.
   */
  pick<T extends HostState>(hosts: readonly T[], ctx: PickContext): T | null;
}

/** Envoy's default Maglev table size; prime, so every skip walks the whole table. */
export const MAGLEV_TABLE_SIZE = 65537;

/** The key a host is known by: `host:port`, IPv6 literals bracketed so the port stays unambiguous. */
export function hostKey(e: Pick<Endpoint, "host" | "port">): string {
  return e.host.includes(":") ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}

/**
 * MurmurHash3 (x86, 32-bit) of the UTF-8 encoding of `s`, without materialising the bytes: the
 * per-request hash of a header value must not allocate. Lone surrogates encode as U+FFFD, as
 * TextEncoder does, so the result equals murmur3 over `Buffer.from(s, "utf8")`.
 */
export function murmur3(s: string, seed = 0): number {
  let h = seed | 0;
  let k = 0;
  let len = 0;
  for (let i = 0; i < s.length; i++) {
    let cp = s.charCodeAt(i);
    if (cp >= 0xd800 && cp <= 0xdfff) {
      const lo = cp <= 0xdbff && i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (lo >= 0xdc00 && lo <= 0xdfff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        i++;
      } else {
        cp = 0xfffd;
      }
    }
    // The code point's UTF-8 bytes, first byte in the low 8 bits.
    let bytes: number;
    let nb: number;
    if (cp < 0x80) {
      bytes = cp;
      nb = 1;
    } else if (cp < 0x800) {
      bytes = (0xc0 | (cp >> 6)) | ((0x80 | (cp & 0x3f)) << 8);
      nb = 2;
    } else if (cp < 0x10000) {
      bytes = (0xe0 | (cp >> 12)) | ((0x80 | ((cp >> 6) & 0x3f)) << 8) | ((0x80 | (cp & 0x3f)) << 16);
      nb = 3;
    } else {
      bytes = (0xf0 | (cp >> 18)) | ((0x80 | ((cp >> 12) & 0x3f)) << 8) | ((0x80 | ((cp >> 6) & 0x3f)) << 16) | ((0x80 | (cp & 0x3f)) << 24);
      nb = 4;
    }
    for (let j = 0; j < nb; j++) {
      k |= ((bytes >>> (8 * j)) & 0xff) << (8 * (len & 3));
      len++;
      if ((len & 3) === 0) {
        k = Math.imul(k, 0xcc9e2d51);
        k = (k << 15) | (k >>> 17);
        k = Math.imul(k, 0x1b873593);
        h ^= k;
        h = (h << 13) | (h >>> 19);
        h = (Math.imul(h, 5) + 0xe6546b64) | 0;
        k = 0;
      }
    }
  }
  if ((len & 3) !== 0) {
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
  }
  h ^= len;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export interface HashableRequest {
  header(name: string): string | undefined;
  cookie(name: string): string | undefined;
  query(name: string): string | undefined;
  readonly sourceIp: string;
}

/**
 * The request's hash for ring_hash/maglev, as Envoy computes it: policies in order, each value
 * hashed and folded in with rotate-left-1-then-xor (so two policies yielding the same value do not
 * cancel out). A terminal policy stops the evaluation once a hash exists — produced by it or by
 * an earlier policy, which is Envoy's rule. Undefined when no policy produced a value.
 */
export function requestHash(policies: readonly HashPolicy[], req: HashableRequest): number | undefined {
  let hash: number | undefined;
  for (const p of policies) {
    let value: string | undefined;
    switch (p.field) {
      case "header":
        // Present-but-empty still hashes (Envoy checks presence, not content)…
        value = req.header(p.name);
        break;
      case "cookie": {
        // …but an empty cookie does not (Envoy treats it as absent).
        const v = req.cookie(p.name);
        value = v === "" ? undefined : v;
        break;
      }
      case "query_parameter":
        value = req.query(p.name);
        break;
      case "source_ip":
        value = req.sourceIp === "" ? undefined : req.sourceIp;
        break;
    }
    if (value !== undefined) {
      const h = murmur3(value);
      hash = hash === undefined ? h : (((hash << 1) | (hash >>> 31)) ^ h) >>> 0;
    }
    if (p.terminal && hash !== undefined) break;
  }
  return hash;
}

function randomIndex(random: () => number, n: number): number {
  const i = Math.floor(random() * n);
  // Guards a random source that returns exactly 1 (Math.random never does; injected ones might).
  return i < n ? i : n - 1;
}

/** How many of `hosts` are not in `exclude`. Retries only, and only after rejection failed. */
function countAllowed(hosts: readonly HostState[], exclude: ReadonlySet<string>): number {
  let n = 0;
  for (const h of hosts) if (!exclude.has(h.key)) n++;
  return n;
}

/** The `k`-th (0-based) host not in `exclude`; the caller ensures k < countAllowed. */
function nthAllowed<T extends HostState>(hosts: readonly T[], exclude: ReadonlySet<string>, k: number): T | undefined {
  for (const h of hosts) {
    if (exclude.has(h.key)) continue;
    if (k === 0) return h;
    k--;
  }
  return undefined;
}

function nonEmpty(exclude: ReadonlySet<string> | undefined): ReadonlySet<string> | undefined {
  return exclude !== undefined && exclude.size > 0 ? exclude : undefined;
}

/**
 * A uniformly random host not in `exclude`. The exclusion set of a retry is a few hosts out of
 * many, so a few rejection draws almost always succeed without a pass over the hosts; counting is
 * the fallback. When every host was already tried, exclusion is dropped (see createBalancer).
 */
function sampleAllowed<T extends HostState>(hosts: readonly T[], exclude: ReadonlySet<string> | undefined, random: () => number): T | undefined {
  const n = hosts.length;
  if (exclude !== undefined) {
    for (let attempt = 0; attempt < 4; attempt++) {
      const h = hosts[randomIndex(random, n)];
      if (h !== undefined && !exclude.has(h.key)) return h;
    }
    const allowed = countAllowed(hosts, exclude);
    if (allowed > 0) return nthAllowed(hosts, exclude, randomIndex(random, allowed));
  }
  return hosts[randomIndex(random, n)];
}

class RoundRobinBalancer implements Balancer {
  private cursor: number;

  constructor(hostCount: number, random: () => number) {
    // A random start keeps sidecars that (re)load the same endpoint set at once from all sending
    // their next request to the same first host.
    this.cursor = hostCount > 0 ? randomIndex(random, hostCount) : 0;
  }

  pick<T extends HostState>(hosts: readonly T[], ctx: PickContext): T | null {
    const n = hosts.length;
    if (n === 0) return null;
    const start = this.cursor % n;
    // The cursor moves on by one whichever host a retry lands on, so retries do not make the
    // next requests skip hosts.
    this.cursor = start + 1;
    const ex = nonEmpty(ctx.exclude);
    if (ex !== undefined) {
      for (let step = 0; step < n; step++) {
        const h = hosts[(start + step) % n];
        if (h !== undefined && !ex.has(h.key)) return h;
      }
    }
    return hosts[start] ?? null;
  }
}

class RandomBalancer implements Balancer {
  constructor(private readonly random: () => number) {}

  pick<T extends HostState>(hosts: readonly T[], ctx: PickContext): T | null {
    if (hosts.length === 0) return null;
    return sampleAllowed(hosts, nonEmpty(ctx.exclude), this.random) ?? null;
  }
}

/** Envoy's unweighted least_request: sample choiceCount hosts (with replacement), fewest in flight wins. */
class LeastRequestBalancer implements Balancer {
  constructor(
    private readonly choiceCount: number,
    private readonly random: () => number,
  ) {}

  pick<T extends HostState>(hosts: readonly T[], ctx: PickContext): T | null {
    const n = hosts.length;
    if (n === 0) return null;
    const ex = nonEmpty(ctx.exclude);
    if (n === 1 && ex === undefined) return hosts[0] ?? null;
    let best: T | null = null;
    for (let c = 0; c < this.choiceCount; c++) {
      const h = sampleAllowed(hosts, ex, this.random);
      if (h !== undefined && (best === null || h.activeRequests < best.activeRequests)) best = h;
    }
    return best;
  }
}

/**
 * Shared by ring_hash and maglev: a table of slots owned by hosts of the set it was built for.
 * A pick walks forward from the request's slot to the first owner that is usable (in `hosts`,
 * not excluded). For the ring, skipping an unavailable host's point is exactly what rebuilding the
 * ring without it would do, so ejecting a host moves only that host's keys; Maglev gets the same
 * property instead of the extra churn a rebuild causes.
 */
abstract class TableBalancer implements Balancer {
  /** Built host → its index in `built`. */
  private readonly position: ReadonlyMap<HostState, number>;
  private readonly fallback: RandomBalancer;
  /**
   * For the last subset seen: built index → index in that subset, or -1. The owner recomputes the
   * available set only when health or ejections change, so one cached entry serves nearly every
   * pick and a degraded cluster costs no more per pick than a whole one.
   */
  private subset: readonly HostState[] | null = null;
  private subsetIndex = new Int32Array(0);
  private subsetUsable = 0;

  protected constructor(
    protected readonly built: readonly HostState[],
    protected readonly owners: Uint32Array,
    random: () => number,
  ) {
    this.position = new Map(built.map((h, i) => [h, i]));
    this.fallback = new RandomBalancer(random);
  }

  protected abstract slot(hash: number): number;

  pick<T extends HostState>(hosts: readonly T[], ctx: PickContext): T | null {
    if (hosts.length === 0) return null;
    if (ctx.hash === undefined || this.owners.length === 0) return this.fallback.pick(hosts, ctx);
    // The usual case: every built host is available and `hosts` is the very array the table was
    // built from, so owners index it directly.
    const whole = hosts === this.built;
    let index: Int32Array | null = null;
    let usable = this.built.length;
    if (!whole) {
      index = this.indexOf(hosts);
      usable = this.subsetUsable;
      // None of `hosts` is on this table: the caller did not rebuild after an endpoint change.
      if (usable === 0) return this.fallback.pick(hosts, ctx);
    }
    let ex = nonEmpty(ctx.exclude);
    // The walk must end at a host: drop exclusion when it covers every usable host (see
    // createBalancer). Only a set at least as large as the usable hosts can.
    if (ex !== undefined && ex.size >= usable && !this.anyUntried(hosts, index, ex)) ex = undefined;
    const owners = this.owners;
    const len = owners.length;
    let p = this.slot(ctx.hash >>> 0);
    for (let step = 0; step < len; step++) {
      const owner = owners[p]!;
      const h = index === null ? hosts[owner] : hosts[index[owner]!];
      if (h !== undefined && (ex === undefined || !ex.has(h.key))) return h;
      p = p + 1 === len ? 0 : p + 1;
    }
    return this.fallback.pick(hosts, ctx);
  }

  private indexOf(hosts: readonly HostState[]): Int32Array {
    if (hosts !== this.subset) {
      const index = new Int32Array(this.built.length).fill(-1);
      let usable = 0;
      for (let i = 0; i < hosts.length; i++) {
        const h = hosts[i];
        const b = h === undefined ? undefined : this.position.get(h);
        if (b !== undefined && index[b] === -1) {
          index[b] = i;
          usable++;
        }
      }
      this.subset = hosts;
      this.subsetIndex = index;
      this.subsetUsable = usable;
    }
    return this.subsetIndex;
  }

  private anyUntried(hosts: readonly HostState[], index: Int32Array | null, exclude: ReadonlySet<string>): boolean {
    for (let b = 0; b < this.built.length; b++) {
      const h = index === null ? hosts[b] : hosts[index[b]!];
      if (h !== undefined && !exclude.has(h.key)) return true;
    }
    return false;
  }
}

/**
 * Points per host: ceil(min / n) rounded up to a power of two, so the count stays the same while
 * n moves within [2^k + 1, 2^(k+1)] and an endpoint joining or leaving moves only its own share
 * of keys (Envoy recomputes it per n, which also shuffles keys between the remaining hosts). The
 * ring therefore holds between min and 2 × min points, and never more than max.
 */
export function ringPointsPerHost(hosts: number, min: number, max: number): number {
  if (hosts === 0) return 0;
  const want = Math.max(1, Math.ceil(min / hosts));
  let per = 1;
  while (per < want) per *= 2;
  if (per * hosts > max) per = Math.max(1, Math.floor(max / hosts));
  return per;
}

class RingHashBalancer extends TableBalancer {
  private constructor(
    built: readonly HostState[],
    owners: Uint32Array,
    private readonly points: Uint32Array,
    random: () => number,
  ) {
    super(built, owners, random);
  }

  static build(hosts: readonly HostState[], min: number, max: number, random: () => number): RingHashBalancer {
    const per = ringPointsPerHost(hosts.length, min, max);
    const total = per * hosts.length;
    const rawPoints = new Uint32Array(total);
    const rawOwners = new Uint32Array(total);
    let idx = 0;
    for (let i = 0; i < hosts.length; i++) {
      const key = hosts[i]!.key;
      for (let j = 0; j < per; j++) {
        // Envoy's ring key form: `<address>_<replica>`.
        rawPoints[idx] = murmur3(`${key}_${j}`);
        rawOwners[idx] = i;
        idx++;
      }
    }
    const order = Array.from({ length: total }, (_, i) => i);
    // Ties (32-bit collisions) are broken by host key so the ring does not depend on the order
    // the endpoints arrived in: every sidecar builds the same ring from the same set.
    order.sort((a, b) => rawPoints[a]! - rawPoints[b]! || compareKeys(hosts[rawOwners[a]!]!.key, hosts[rawOwners[b]!]!.key) || a - b);
    const points = new Uint32Array(total);
    const owners = new Uint32Array(total);
    for (let i = 0; i < total; i++) {
      const from = order[i]!;
      points[i] = rawPoints[from]!;
      owners[i] = rawOwners[from]!;
    }
    return new RingHashBalancer(hosts, owners, points, random);
  }

  /** The first point at or after `hash`, wrapping to the start of the ring. */
  protected slot(hash: number): number {
    const pts = this.points;
    let lo = 0;
    let hi = pts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pts[mid]! < hash) lo = mid + 1;
      else hi = mid;
    }
    return lo === pts.length ? 0 : lo;
  }
}

function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

const MAGLEV_OFFSET_SEED = 0;
const MAGLEV_SKIP_SEED = 0x5bd1e995;

class MaglevBalancer extends TableBalancer {
  private constructor(built: readonly HostState[], owners: Uint32Array, random: () => number) {
    super(built, owners, random);
  }

  /** The population of the Maglev paper (Eisenbud et al. 2016, §3.4), unweighted. */
  static build(hosts: readonly HostState[], random: () => number): MaglevBalancer {
    const m = MAGLEV_TABLE_SIZE;
    const n = hosts.length;
    if (n > m) throw new RangeError(`maglev: ${n} hosts do not fit a table of ${m} entries`);
    if (n === 0) return new MaglevBalancer(hosts, new Uint32Array(0), random);
    // Filling in key order makes the table independent of the order endpoints arrived in.
    const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => compareKeys(hosts[a]!.key, hosts[b]!.key) || a - b);
    const next = new Uint32Array(n);
    const skip = new Uint32Array(n);
    for (let r = 0; r < n; r++) {
      const key = hosts[order[r]!]!.key;
      next[r] = murmur3(key, MAGLEV_OFFSET_SEED) % m;
      skip[r] = (murmur3(key, MAGLEV_SKIP_SEED) % (m - 1)) + 1;
    }
    const table = new Int32Array(m).fill(-1);
    let filled = 0;
    while (filled < m) {
      for (let r = 0; r < n && filled < m; r++) {
        let c = next[r]!;
        const s = skip[r]!;
        while (table[c]! >= 0) {
          c += s;
          if (c >= m) c -= m;
        }
        table[c] = order[r]!;
        c += s;
        if (c >= m) c -= m;
        next[r] = c;
        filled++;
      }
    }
    return new MaglevBalancer(hosts, Uint32Array.from(table), random);
  }

  protected slot(hash: number): number {
    return hash % MAGLEV_TABLE_SIZE;
  }
}

/**
 * A balancer for `hosts` under `lb`. Call once per installed endpoint set (and again whenever
 * that set changes); pass the same HostState objects — usually the same array — to pick.
 * `random` (default Math.random) is injectable so tests are deterministic.
 *
 * Exclusion (ctx.exclude) is a strong preference, not a filter: a host not yet tried is returned
 * whenever `hosts` has one; when every host was tried, the policy picks as if nothing were
 * excluded. Envoy's previous_hosts predicate also gives up after host_selection_retry_max_attempts
 * and uses the host it selected, so a retry on a one-host cluster still happens. Callers that
 * want "no retry unless a new host exists" check for that before picking.
 */
export function createBalancer(lb: LoadBalancer, hosts: readonly HostState[], random: () => number = Math.random): Balancer {
  switch (lb.policy) {
    case "round_robin":
      return new RoundRobinBalancer(hosts.length, random);
    case "random":
      return new RandomBalancer(random);
    case "least_request":
      if (!Number.isInteger(lb.choiceCount) || lb.choiceCount < 1) {
        throw new RangeError(`least_request: choiceCount ${String(lb.choiceCount)} must be an integer >= 1 (Envoy's default is 2)`);
      }
      return new LeastRequestBalancer(lb.choiceCount, random);
    case "ring_hash": {
      const { min, max } = lb.ringSize;
      if (!Number.isInteger(min) || !Number.isInteger(max) || min < 1 || max < min) {
        throw new RangeError(`ring_hash: ringSize {min: ${String(min)}, max: ${String(max)}} must be integers with 1 <= min <= max`);
      }
      return RingHashBalancer.build(hosts, min, max, random);
    }
    case "maglev":
      return MaglevBalancer.build(hosts, random);
    case "peak_ewma":
      return new PeakEwmaBalancer(random);
  }
}

export interface PeakEwmaOptions {
  /** Estimate for a host with no sample yet (linkerd2-proxy's default_rtt: 30 ms). */
  readonly defaultRttMs?: number;
  /** Time constant of the decay (linkerd2-proxy's default: 10 s). */
  readonly decayMs?: number;
  readonly now?: () => number;
}

interface RttEstimate {
  rttMs: number;
  atMs: number;
}

/**
 * Latency-aware P2C after linkerd2-proxy (tower's PeakEwma), an extra policy outside LbPolicy:
 * the caller constructs it directly, keeps one per cluster across endpoint changes (estimates are
 * keyed by host key; retain() drops departed hosts) and reports each response's latency with
 * observe(). Cost = RTT estimate × (activeRequests + 1); of two distinct random hosts the cheaper
 * wins. A sample above the estimate replaces it at once (the "peak"); lower samples pull it down
 * exponentially, and an idle estimate decays toward 0 so a host that was slow gets tried again.
 * Unlike least_request it steers away from a slow host even when nothing is in flight, which is
 * when least_request degenerates to random.
 */
export class PeakEwmaBalancer implements Balancer {
  private readonly estimates = new Map<string, RttEstimate>();
  private readonly defaultRttMs: number;
  private readonly decayMs: number;
  private readonly now: () => number;

  constructor(
    private readonly random: () => number = Math.random,
    opts: PeakEwmaOptions = {},
  ) {
    this.defaultRttMs = Math.max(1, opts.defaultRttMs ?? 30);
    this.decayMs = opts.decayMs ?? 10_000;
    if (!(this.decayMs > 0)) throw new RangeError(`peak_ewma: decayMs ${String(opts.decayMs)} must be > 0`);
    this.now = opts.now ?? (() => performance.now());
  }

  /** One finished request's latency to the host with this key. */
  observe(key: string, rttMs: number): void {
    const now = this.now();
    const e = this.estimates.get(key);
    if (e === undefined) {
      this.estimates.set(key, { rttMs, atMs: now });
      return;
    }
    if (rttMs > e.rttMs) {
      e.rttMs = rttMs;
    } else {
      const w = Math.exp(-Math.max(0, now - e.atMs) / this.decayMs);
      e.rttMs = e.rttMs * w + rttMs * (1 - w);
    }
    e.atMs = now;
  }

  /** Forget estimates of hosts that left the cluster. */
  retain(keys: readonly string[]): void {
    const keep = new Set(keys);
    for (const k of this.estimates.keys()) if (!keep.has(k)) this.estimates.delete(k);
  }

  /** The host's current cost (exported for tests and the admin page). */
  cost(h: HostState, now: number = this.now()): number {
    const e = this.estimates.get(h.key);
    const rtt = e === undefined ? this.defaultRttMs : e.rttMs * Math.exp(-Math.max(0, now - e.atMs) / this.decayMs);
    return rtt * (h.activeRequests + 1);
  }

  pick<T extends HostState>(hosts: readonly T[], ctx: PickContext): T | null {
    const n = hosts.length;
    if (n === 0) return null;
    const ex = nonEmpty(ctx.exclude);
    let a: T | undefined;
    let b: T | undefined;
    if (ex === undefined) {
      if (n === 1) return hosts[0] ?? null;
      // Two distinct hosts, as tower's P2C draws them.
      const i = randomIndex(this.random, n);
      let j = randomIndex(this.random, n - 1);
      if (j >= i) j++;
      a = hosts[i];
      b = hosts[j];
    } else {
      a = sampleAllowed(hosts, ex, this.random);
      b = sampleAllowed(hosts, ex, this.random);
    }
    if (a === undefined) return b ?? null;
    if (b === undefined || a === b) return a;
    const now = this.now();
    return this.cost(b, now) < this.cost(a, now) ? b : a;
  }
}
