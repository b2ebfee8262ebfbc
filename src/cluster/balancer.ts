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
   * get them back without a cast.
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

/** How many of `hosts` are not in `exclude`. Only computed on retries (non-empty exclude). */
function countAllowed(hosts: readonly HostState[], exclude: ReadonlySet<string>): number {
  let n = 0;
  for (const h of hosts) if (!exclude.has(h.key)) n++;
  return n;
}

/** The `k`-th (0-based) host not in `exclude`; the caller ensures k < countAllowed. */
function nthAllowed<T extends HostState>(hosts: readonly T[], exclude: ReadonlySet<string>, k: number): T | null {
  for (const h of hosts) {
    if (exclude.has(h.key)) continue;
    if (k === 0) return h;
    k--;
  }
  return null;
}

/**
 * The exclusion set to honour, or undefined. When every host was already tried, exclusion is
 * dropped and the policy picks as usual: Envoy's previous_hosts predicate likewise gives up after
 * host_selection_retry_max_attempts and uses the host it selected, so a retry on a one-host
 * cluster still happens.
 */
function effectiveExclude(hosts: readonly HostState[], exclude: ReadonlySet<string> | undefined): ReadonlySet<string> | undefined {
  if (exclude === undefined || exclude.size === 0) return undefined;
  for (const h of hosts) if (!exclude.has(h.key)) return exclude;
  return undefined;
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
    const ex = effectiveExclude(hosts, ctx.exclude);
    // The cursor moves on by one whichever host a retry lands on, so retries do not make the
    // next requests skip hosts.
    this.cursor = start + 1;
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
    const n = hosts.length;
    if (n === 0) return null;
    const ex = effectiveExclude(hosts, ctx.exclude);
    if (ex === undefined) return hosts[randomIndex(this.random, n)] ?? null;
    return nthAllowed(hosts, ex, randomIndex(this.random, countAllowed(hosts, ex)));
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
    if (n === 1) return hosts[0] ?? null;
    const ex = effectiveExclude(hosts, ctx.exclude);
    const allowed = ex === undefined ? n : countAllowed(hosts, ex);
    let best: T | null = null;
    for (let c = 0; c < this.choiceCount; c++) {
      const i = randomIndex(this.random, allowed);
      const h = ex === undefined ? hosts[i] : nthAllowed(hosts, ex, i);
      if (h !== undefined && h !== null && (best === null || h.activeRequests < best.activeRequests)) best = h;
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
  private readonly members: ReadonlySet<HostState>;
  private readonly fallback: RandomBalancer;

  protected constructor(
    protected readonly built: readonly HostState[],
    protected readonly owners: Uint32Array,
    random: () => number,
  ) {
    this.members = new Set(built);
    this.fallback = new RandomBalancer(random);
  }

  protected abstract slot(hash: number): number;

  pick<T extends HostState>(hosts: readonly T[], ctx: PickContext): T | null {
    if (hosts.length === 0) return null;
    if (ctx.hash === undefined || this.owners.length === 0) return this.fallback.pick(hosts, ctx);
    // The usual case: every built host is available and this is the very array the table was
    // built from, so membership needs no test.
    const whole = hosts === this.built;
    let ex = ctx.exclude !== undefined && ctx.exclude.size > 0 ? ctx.exclude : undefined;
    if (!whole || ex !== undefined) {
      // Make sure the walk below ends at a host: with exclusion if some usable host is not yet
      // tried, without it otherwise; and never trust `hosts` to belong to this table.
      let usable = 0;
      let untried = 0;
      for (const h of hosts) {
        if (!this.members.has(h)) continue;
        usable++;
        if (ex === undefined || !ex.has(h.key)) untried++;
      }
      if (usable === 0) return this.fallback.pick(hosts, ctx);
      if (untried === 0) ex = undefined;
    }
    const owners = this.owners;
    const built = this.built;
    const len = owners.length;
    let p = this.slot(ctx.hash >>> 0);
    for (let step = 0; step < len; step++) {
      const owner = owners[p]!;
      const h = whole ? hosts[owner] : member(hosts, built[owner]);
      if (h !== undefined && (ex === undefined || !ex.has(h.key))) return h;
      p = p + 1 === len ? 0 : p + 1;
    }
    return this.fallback.pick(hosts, ctx);
  }
}

/** `h` as an element of `hosts`, or undefined. A plain loop: this runs per pick, so no closure. */
function member<T extends HostState>(hosts: readonly T[], h: HostState | undefined): T | undefined {
  for (let i = 0; i < hosts.length; i++) {
    const x = hosts[i];
    if (x === h) return x;
  }
  return undefined;
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
  }
}
