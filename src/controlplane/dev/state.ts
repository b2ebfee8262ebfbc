// The dev control plane's state directory, shared by every meshproxy on the machine:
//
//   <dir>/ca/config.json     trust domain, datacenter, leaf TTL (human-editable)
//   <dir>/ca/root.pem        the dev root CA certificate
//   <dir>/ca/root.key        its private key (0600)
//   <dir>/ca/roots.json      after `meshproxy ca rotate` (0600): the active root with its key and
//                            its cross-signed intermediate, and the previous root's certificate;
//                            when present it replaces root.pem/root.key
//   <dir>/catalog/<id>.json  one file per registered service instance of the home datacenter
//                            (ca/config.json's datacenter, dc1 unless edited)
//   <dir>/catalog/<dc>/<id>.json  the same for another datacenter: one CA and trust domain,
//                            a catalog per datacenter (-datacenter picks a proxy's own)
//   <dir>/intentions.json    intentions (human-editable; `meshproxy intention ...` edits it)
//   <dir>/config/<kind>/<name>.json  Consul config entries (`meshproxy config write` puts them there)
//
// Every write is temp-file + rename, so a reader never sees half a file. The layout is created
// whole when the directory is first used, so a file or directory missing later was deleted:
// that is an error to report, never an empty (allow-everything) configuration.
import { mkdir, readFile, writeFile, rename, readdir, rm, chmod, mkdtemp, lstat } from "node:fs/promises";
import { readRegularFile } from "../read-file.js";
import { createHash, createPrivateKey, randomUUID, X509Certificate } from "node:crypto";
import { join } from "node:path";
import type { CaMaterial } from "../../identity/ca.js";
import { colonHexSerial, serialOf } from "../../identity/serial.js";
import { createRootCaInWorker } from "../../identity/ca-worker.js";
import { parseDurationMs, formatDurationMs } from "../../config/duration.js";
import { isValidServiceName } from "../../config/validate.js";
import { parseEntry, parsePermissions, EntryError, ENTRY_KINDS, type ConfigEntry, type EntryKind } from "../chain/entries.js";
import { DEFAULTS, type Intention, type IntentionPolicy, type Protocol } from "../../config/snapshot.js";
import type { HeaderMatch, Permission } from "../../config/http.js";
import { CompiledL7Intentions, PermissionCompileError } from "../../authz/l7.js";
import { jsonErrorWhere } from "../json-error.js";
import { withLock } from "./lock.js";
import { checkStateDir } from "./permissions.js";
import { SplitChangeError, type SubsetWeight } from "../../config/split-weights.js";
import { splitterWithWeights, storedResolver, storedSplitter } from "../chain/split-edit.js";
import { parseProcessFields, type ProcessRef } from "./process-identity.js";

export interface CaConfig {
  readonly trustDomain: string;
  readonly datacenter: string;
  readonly leafTtlMs: number;
}

/** The roots of the dev CA: the active one (which signs leaves) and those still trusted. */
export interface CaRoots extends CaMaterial {
  /** The active root's serial, colon-hex: what `meshproxy ca roots` and the logs call it. */
  readonly rootId: string;
  /** Sent after every leaf: the active root cross-signed by the previous one (none before a rotation). */
  readonly intermediatesPem: readonly string[];
  /** The trust bundle: the active root first, then the previous one until the next rotation. */
  readonly rootsPem: readonly string[];
  /** Read from roots.json: a rotation has happened, and root.pem no longer says which root is active. */
  readonly rotated: boolean;
}

export interface DevCa extends CaRoots {
  readonly config: CaConfig;
}

export interface CatalogEntry extends ProcessRef {
  readonly id: string;
  readonly service: string;
  readonly address: string;
  readonly port: number;
  readonly protocol: Protocol;
  readonly meta: Readonly<Record<string, string>>;
  /** Consul's service Kind; absent for a sidecar's service instance. */
  readonly kind?: "mesh-gateway";
}

/** A problem with a file in the state directory: which file and what to do about it. */
export class StateError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "StateError";
  }
}

export function defaultDataDir(): string {
  return process.env["MESHPROXY_DATA_DIR"] || ".meshproxy";
}

export const paths = (dir: string) => ({
  caDir: join(dir, "ca"),
  caConfig: join(dir, "ca", "config.json"),
  rootCert: join(dir, "ca", "root.pem"),
  rootKey: join(dir, "ca", "root.key"),
  roots: join(dir, "ca", "roots.json"),
  catalog: join(dir, "catalog"),
  intentions: join(dir, "intentions.json"),
  entries: join(dir, "config"),
});

async function atomicWrite(file: string, data: string, mode = 0o644): Promise<void> {
  const tmp = `${file}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`;
  await writeFile(tmp, data, { mode });
  await chmod(tmp, mode);
  await rename(tmp, file);
}

function errnoOf(e: unknown): string | undefined {
  return e instanceof Error && "code" in e && typeof e.code === "string" ? e.code : undefined;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** JSON.parse, or a StateError naming the file, the line and the column. */
function parseJson(text: string, file: string, hint = ""): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new StateError(file, `not valid JSON (${jsonErrorWhere(text, e)})${hint}`);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A typo in a key must not silently fall back to a default (an unread default_action is allow). */
function checkKeys(file: string, at: string, o: Record<string, unknown>, known: readonly string[]): void {
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) throw new StateError(file, `${at}${at ? "." : ""}${k}: unknown key (known keys: ${known.join(", ")})`);
  }
}

/** Parses ca/config.json. */
export function parseCaConfig(text: string, file: string): CaConfig {
  const raw = parseJson(text, file, "; fix it or remove the ca/ directory to make a new CA");
  if (!isRecord(raw)) throw new StateError(file, "must be a JSON object");
  const o = raw;
  const td = o["trust_domain"];
  const dc = o["datacenter"] ?? DEFAULTS.datacenter;
  const ttl = parseDurationMs(o["leaf_cert_ttl"] ?? "72h");
  if (typeof td !== "string" || !/^[a-z0-9-]+(\.[a-z0-9-]+)*$/.test(td)) throw new StateError(file, "trust_domain must be a DNS-like name");
  if (typeof dc !== "string" || !isValidServiceName(dc)) throw new StateError(file, "datacenter must be a simple name like dc1");
  if (ttl === null || ttl < 1000) throw new StateError(file, `leaf_cert_ttl must be a duration of at least 1s, like "72h"`);
  return { trustDomain: td, datacenter: dc, leafTtlMs: ttl };
}

/**
 * Loads the dev CA, creating it on first use. Two proxies starting at once on a fresh
 * directory race to rename a fully written temp directory into place; the loser reads the
 * winner's CA, so every proxy on the machine trusts the same root.
 */
export async function ensureCa(dir: string): Promise<DevCa & { created: boolean }> {
  const p = paths(dir);
  let created = false;
  try {
    await readFile(p.rootCert);
  } catch {
    const trustDomain = `${randomUUID()}.consul`;
    const ca = await createRootCaInWorker(trustDomain);
    const tmp = await mkdtemp(join(dir, ".ca-"));
    await writeFile(join(tmp, "root.pem"), ca.certPem, { mode: 0o644 });
    await writeFile(join(tmp, "root.key"), ca.keyPem, { mode: 0o600 });
    await chmod(join(tmp, "root.key"), 0o600);
    const cfg = { trust_domain: trustDomain, datacenter: DEFAULTS.datacenter, leaf_cert_ttl: formatDurationMs(DEFAULTS.leafTtlMs) };
    await writeFile(join(tmp, "config.json"), JSON.stringify(cfg, null, 2) + "\n", { mode: 0o644 });
    try {
      await rename(tmp, p.caDir);
      created = true;
    } catch {
      await rm(tmp, { recursive: true, force: true });
    }
  }
  const [roots, cfgText] = await Promise.all([readCaRoots(dir, { rotated: false }), readRegularFile(p.caConfig)]);
  return { ...roots, config: parseCaConfig(cfgText, p.caConfig), created };
}

function certificate(file: string, at: string, pem: unknown): X509Certificate {
  if (typeof pem !== "string") throw new StateError(file, `${at} must be a PEM certificate string`);
  try {
    return new X509Certificate(pem);
  } catch (e) {
    throw new StateError(file, `${at} is not a certificate (${messageOf(e)})`);
  }
}

/** Parses ca/roots.json, checking that every certificate parses and the key is the active root's. */
export function parseCaRoots(text: string, file: string): CaRoots {
  const raw = parseJson(text, file, "; restore it from a backup, or run `meshproxy ca rotate` again");
  if (!isRecord(raw) || !isRecord(raw["active"]) || !Array.isArray(raw["previous"])) throw new StateError(file, 'must be a JSON object {"active": {...}, "previous": [...]}');
  const active = raw["active"];
  const cert = certificate(file, "active.cert_pem", active["cert_pem"]);
  const keyPem = active["key_pem"];
  if (typeof keyPem !== "string") throw new StateError(file, "active.key_pem must be a PEM private key string");
  try {
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) throw new Error("it is not the key of active.cert_pem");
  } catch (e) {
    throw new StateError(file, `active.key_pem: ${messageOf(e)}`);
  }
  const cross = active["cross_signed_pem"];
  const intermediatesPem = cross === undefined || cross === null ? [] : [certificate(file, "active.cross_signed_pem", cross).toString()];
  const previous = raw["previous"].map((p: unknown, i: number) => certificate(file, `previous[${i}].cert_pem`, isRecord(p) ? p["cert_pem"] : undefined).toString());
  const certPem = cert.toString();
  return { certPem, keyPem, rootId: colonHexSerial(cert.serialNumber), intermediatesPem, rootsPem: [certPem, ...previous], rotated: true };
}

/**
 * Reads the dev CA's roots: ca/roots.json once a rotation wrote it, else root.pem and root.key.
 * Once roots.json has been seen (`rotated`), its absence is a deletion to report, never a reason
 * to fall back to the first root.
 */
export async function readCaRoots(dir: string, opts: { rotated: boolean }): Promise<CaRoots> {
  const p = paths(dir);
  try {
    return parseCaRoots(await readRegularFile(p.roots), p.roots);
  } catch (e) {
    if (errnoOf(e) !== "ENOENT") throw e instanceof StateError ? e : new StateError(p.roots, `cannot be read (${messageOf(e)})`);
    if (opts.rotated) throw new StateError(p.roots, "missing (deleted?); it says which root is active since `meshproxy ca rotate`: restore it, or run `meshproxy ca rotate` to make a new one");
  }
  const [certPem, keyPem] = await Promise.all([readRegularFile(p.rootCert), readRegularFile(p.rootKey)]);
  return { certPem, keyPem, rootId: serialOf(certPem), intermediatesPem: [], rootsPem: [certPem], rotated: false };
}

/** Writes ca/roots.json whole (temp file + rename, 0600: it holds the active root's key). */
export async function writeCaRoots(dir: string, active: CaMaterial & { readonly crossSignedPem: string }, previousPem: readonly string[]): Promise<void> {
  const body = {
    active: { cert_pem: active.certPem, key_pem: active.keyPem, cross_signed_pem: active.crossSignedPem },
    previous: previousPem.map((cert_pem) => ({ cert_pem })),
  };
  await atomicWrite(paths(dir).roots, JSON.stringify(body, null, 2) + "\n", 0o600);
}

// ---- the directory ----

/** What a fresh state directory allows: as a Consul agent with ACLs disabled. */
export const INITIAL_POLICY: IntentionPolicy = { defaultAction: "allow", intentions: [] };

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (e) {
    if (errnoOf(e) === "ENOENT") return false;
    throw new StateError(path, `cannot be read (${messageOf(e)})`);
  }
}

/**
 * Opens the state directory for the proxy and the CLI: creates it when missing, refuses it when
 * it is not private (UnsafeStateDirError), and lays it out when it is new. New means neither
 * config/ nor catalog/ exists yet (a hand-written intentions.json or a CA put in place may already
 * be there and is kept). In a directory that is not new nothing is created: a missing intentions.json or config
 * directory there was deleted, and the readers report it.
 */
export async function openStateDir(dir: string): Promise<{ created: boolean }> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new StateError(dir, `cannot create the state directory (${messageOf(e)}); choose another -data-dir`);
  }
  await checkStateDir(dir, ENTRY_KINDS);
  const p = paths(dir);
  if ((await exists(p.entries)) && (await exists(p.intentions))) return { created: false };
  const created = await withLock(p.intentions, async () => {
    // ca/ alone does not make it used: a CA may be put in place before the first start.
    for (const used of [p.entries, p.catalog]) if (await exists(used)) return false;
    // config/ appears whole (every kind directory in it), so nobody sees it half made.
    const tmp = await mkdtemp(join(dir, ".config-"));
    for (const kind of ENTRY_KINDS) await mkdir(join(tmp, kind), { mode: 0o755 });
    await chmod(tmp, 0o755);
    await rename(tmp, p.entries);
    await mkdir(p.catalog, { recursive: true, mode: 0o755 });
    if (!(await exists(p.intentions))) await writeIntentions(dir, INITIAL_POLICY);
    return true;
  });
  return { created };
}

// ---- catalog ----

/**
 * The catalog directory of `datacenter`: the home datacenter's is catalog/ itself (so a state
 * directory made before there were several datacenters keeps working), another's catalog/<dc>/.
 */
export function catalogDir(dir: string, datacenter: string, home: string): string {
  if (!isValidServiceName(datacenter)) throw new StateError(dir, `datacenter ${JSON.stringify(datacenter)} is not a simple name like dc2`);
  return datacenter === home ? paths(dir).catalog : join(paths(dir).catalog, datacenter);
}

/** Every datacenter with a catalog: the home one, and each catalog/<dc>/ directory. */
export async function listDatacenters(dir: string, home: string): Promise<string[]> {
  const out = new Set([home]);
  try {
    for (const d of await readdir(paths(dir).catalog, { withFileTypes: true })) if (d.isDirectory() && isValidServiceName(d.name)) out.add(d.name);
  } catch (e) {
    if (errnoOf(e) !== "ENOENT") throw new StateError(paths(dir).catalog, `cannot be read (${messageOf(e)})`);
  }
  return [...out].sort();
}

export async function registerInstance(dir: string, entry: CatalogEntry, catalog = paths(dir).catalog): Promise<void> {
  await mkdir(catalog, { recursive: true, mode: 0o755 });
  await atomicWrite(join(catalog, `${entry.id}.json`), JSON.stringify(entry, null, 2) + "\n");
}

export async function deregisterInstance(dir: string, id: string, catalog = paths(dir).catalog): Promise<void> {
  await rm(join(catalog, `${id}.json`), { force: true });
}

const PROTOCOLS: readonly Protocol[] = ["tcp", "http", "http2", "grpc"];

/** Parses one catalog/<id>.json; every message names the field that is wrong. */
export function parseCatalogEntry(text: string, file: string): CatalogEntry {
  const o = parseJson(text, file);
  if (!isRecord(o)) throw new StateError(file, "not a catalog entry: must be a JSON object with id, service, address, port, pid, protocol");
  const { id, service, address, port, pid, protocol, meta, kind } = o;
  if (typeof id !== "string" || id === "") throw new StateError(file, `id must be a non-empty string, got ${JSON.stringify(id) ?? "nothing"}`);
  if (typeof service !== "string" || !isValidServiceName(service)) throw new StateError(file, `service must be a service name, got ${JSON.stringify(service) ?? "nothing"}`);
  if (typeof address !== "string" || address === "") throw new StateError(file, `address must be a non-empty string, got ${JSON.stringify(address) ?? "nothing"}`);
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) throw new StateError(file, `port must be a whole number from 1 to 65535, got ${JSON.stringify(port) ?? "nothing"}`);
  // A pid of 0 or below would make the liveness check signal a process group.
  if (typeof pid !== "number" || !Number.isSafeInteger(pid) || pid < 1) throw new StateError(file, `pid must be a positive whole number, got ${JSON.stringify(pid) ?? "nothing"}`);
  let proc: ReturnType<typeof parseProcessFields>;
  try {
    proc = parseProcessFields(o);
  } catch (e) {
    throw new StateError(file, messageOf(e));
  }
  const proto = PROTOCOLS.find((x) => x === protocol);
  if (proto === undefined) throw new StateError(file, `protocol must be one of ${PROTOCOLS.join(", ")}, got ${JSON.stringify(protocol) ?? "nothing"}`);
  const m: Record<string, string> = {};
  if (meta !== undefined) {
    if (!isRecord(meta)) throw new StateError(file, "meta must be an object of strings");
    for (const [k, v] of Object.entries(meta)) {
      if (typeof v !== "string") throw new StateError(file, `meta.${k} must be a string, got ${JSON.stringify(v) ?? "nothing"}`);
      m[k] = v;
    }
  }
  if (kind !== undefined && kind !== "mesh-gateway") throw new StateError(file, `kind must be "mesh-gateway" or absent (a service instance), got ${JSON.stringify(kind)}`);
  return { id, service, address, port, pid, ...proc, protocol: proto, meta: m, ...(kind ? { kind } : {}) };
}

export interface CatalogRead {
  readonly entries: CatalogEntry[];
  /** Files that could not be read, with why; they are skipped, not fatal. */
  readonly problems: StateError[];
  /**
   * False when the directory or a file could not be read at all (out of descriptors, an I/O
   * error), as opposed to a file that is broken: the entries are then not the catalog, and the
   * reader keeps the one it had rather than losing the instances it could not see.
   */
  readonly complete: boolean;
}

export async function readCatalog(dir: string, catalog = paths(dir).catalog): Promise<CatalogRead> {
  let names: string[];
  try {
    names = await readdir(catalog);
  } catch (e) {
    // A datacenter without a catalog directory has no instances; anything else is not knowing.
    if (errnoOf(e) === "ENOENT") return { entries: [], problems: [], complete: true };
    return { entries: [], problems: [new StateError(catalog, `cannot be read (${messageOf(e)})`)], complete: false };
  }
  const entries: CatalogEntry[] = [];
  const problems: StateError[] = [];
  let complete = true;
  for (const name of names.sort()) {
    if (!name.endsWith(".json")) continue;
    const file = join(catalog, name);
    try {
      entries.push(parseCatalogEntry(await readRegularFile(file), file));
    } catch (e) {
      if (e instanceof StateError) problems.push(e);
      else if (errnoOf(e) !== "ENOENT") {
        problems.push(new StateError(file, messageOf(e)));
        complete = false;
      }
    }
  }
  return { entries, problems, complete };
}

// ---- intentions ----

const POLICY_KEYS = ["default_action", "intentions"] as const;
const INTENTION_KEYS = ["source", "destination", "action", "description", "permissions", "Permissions"] as const;

/** Parses intentions.json; every message names the entry and field that is wrong. */
export function parseIntentions(text: string, file: string): IntentionPolicy {
  const raw = parseJson(text, file);
  if (!isRecord(raw)) throw new StateError(file, 'must be a JSON object: {"default_action": "allow" or "deny", "intentions": [...]}');
  checkKeys(file, "", raw, POLICY_KEYS);
  // Absent means Consul's default; null or anything else is a mistake, not a default.
  const def = raw["default_action"] === undefined ? "allow" : raw["default_action"];
  if (def !== "allow" && def !== "deny") throw new StateError(file, `default_action must be "allow" or "deny", got ${JSON.stringify(def)}`);
  const list = raw["intentions"] === undefined ? [] : raw["intentions"];
  if (!Array.isArray(list)) throw new StateError(file, `intentions must be an array, got ${JSON.stringify(list)}`);
  const intentions: Intention[] = list.map((v: unknown, i: number) => {
    const at = `intentions[${i}]`;
    if (!isRecord(v)) throw new StateError(file, `${at} must be an object`);
    checkKeys(file, at, v, INTENTION_KEYS);
    const { source, destination, action, description } = v;
    if (typeof source !== "string" || (source !== "*" && !isValidServiceName(source))) throw new StateError(file, `${at}.source must be a service name or "*", got ${JSON.stringify(source) ?? "nothing"}`);
    if (typeof destination !== "string" || (destination !== "*" && !isValidServiceName(destination))) throw new StateError(file, `${at}.destination must be a service name or "*", got ${JSON.stringify(destination) ?? "nothing"}`);
    if (description !== undefined && typeof description !== "string") throw new StateError(file, `${at}.description must be a string`);
    if (v["permissions"] !== undefined && v["Permissions"] !== undefined) throw new StateError(file, `${at}: give permissions or Permissions, not both`);
    const permissions = parseIntentionPermissions(v["permissions"] ?? v["Permissions"], file, `${at}.permissions`);
    if (permissions.length > 0) {
      // As Consul: an L7 intention's permissions decide, and a request matching none gets the
      // default action; an action beside them would read as a fallback it is not.
      if (action !== undefined) throw new StateError(file, `${at}: omit action when permissions are given (a request matching no permission gets default_action)`);
      // The stored action is what a connection-level check does with an L7 intention: deny.
      const it: Intention = { source, destination, action: "deny", permissions };
      return description !== undefined ? { ...it, description } : it;
    }
    if (action !== "allow" && action !== "deny") throw new StateError(file, `${at}.action must be "allow" or "deny", got ${JSON.stringify(action) ?? "nothing"}`);
    const it: Intention = { source, destination, action };
    return description !== undefined ? { ...it, description } : it;
  });
  const seen = new Set<string>();
  intentions.forEach((it, i) => {
    const key = `${it.source} => ${it.destination}`;
    if (seen.has(key)) throw new StateError(file, `intentions[${i}]: a second intention for ${key}; keep one`);
    seen.add(key);
  });
  const policy: IntentionPolicy = { defaultAction: def, intentions };
  // A bad permission regex is reported here, naming the field, so the previous intentions stay
  // in force; the proxy would otherwise refuse the whole Snapshot.
  try {
    for (const d of new Set(intentions.map((it) => it.destination))) new CompiledL7Intentions(policy, d);
  } catch (e) {
    if (e instanceof PermissionCompileError) throw new StateError(file, `${e.field}: ${e.reason}`);
    throw e;
  }
  return policy;
}

function parseIntentionPermissions(v: unknown, file: string, at: string): Permission[] {
  try {
    return parsePermissions(v, at);
  } catch (e) {
    if (e instanceof EntryError) throw new StateError(file, e.message);
    throw e;
  }
}

/** Consul's snake_case form, which parsePermissions reads back. */
function permissionJson(p: Permission): Record<string, unknown> {
  const http: Record<string, unknown> = {};
  if (p.path) http[p.path.kind === "exact" ? "path_exact" : p.path.kind === "prefix" ? "path_prefix" : "path_regex"] = p.path.value;
  if (p.methods.length > 0) http["methods"] = p.methods;
  if (p.headers.length > 0) http["header"] = p.headers.map((h: HeaderMatch) => ({ ...h }));
  return { action: p.action, http };
}

/** Reads intentions.json. A missing file was deleted (openStateDir creates it): an error, never allow-all. */
export async function readIntentions(dir: string): Promise<IntentionPolicy> {
  const file = paths(dir).intentions;
  let text: string;
  try {
    text = await readRegularFile(file);
  } catch (e) {
    if (errnoOf(e) === "ENOENT") {
      throw new StateError(
        file,
        `missing (deleted?). It holds the default action and every intention, so nothing is allowed without it: restore it, or create it with {"default_action": "deny", "intentions": []} ("allow" to allow what no intention denies)`,
      );
    }
    throw new StateError(file, `cannot be read (${messageOf(e)})`);
  }
  return parseIntentions(text, file);
}

/**
 * A read-modify-write of intentions.json under its lock, so concurrent edits all land. `edit`
 * returns the new policy (null to write nothing) and a result for the caller.
 */
export async function editIntentions<T>(dir: string, edit: (p: IntentionPolicy) => { policy: IntentionPolicy | null; result: T }): Promise<T> {
  return withLock(paths(dir).intentions, async () => {
    const { policy, result } = edit(await readIntentions(dir));
    if (policy) await writeIntentions(dir, policy);
    return result;
  });
}

/** Writes intentions.json whole (temp file + rename). Concurrent editors use editIntentions. */
export async function writeIntentions(dir: string, policy: IntentionPolicy): Promise<void> {
  const body = {
    default_action: policy.defaultAction,
    intentions: policy.intentions.map((it) => ({
      source: it.source,
      destination: it.destination,
      // Kept through CLI edits of other intentions; an L7 intention has no action of its own.
      ...(it.permissions && it.permissions.length > 0 ? { permissions: it.permissions.map(permissionJson) } : { action: it.action }),
      ...(it.description ? { description: it.description } : {}),
    })),
  };
  await atomicWrite(paths(dir).intentions, JSON.stringify(body, null, 2) + "\n");
}

// ---- config entries ----

export interface EntriesRead {
  readonly entries: ConfigEntry[];
  readonly problems: StateError[];
}

/** Where an entry lives. The name becomes a path, so only a service name (no `/`, no `..`) is one. */
export function entryFile(dir: string, kind: EntryKind, name: string): string {
  if (!isValidServiceName(name)) throw new StateError(join(paths(dir).entries, kind), `"${name}" is not a config entry name (letters, digits, - _ .)`);
  return join(paths(dir).entries, kind, `${name}.json`);
}

/** Parses one config entry file; `kind` and `name` are what its path says it holds. */
export function parseEntryFile(text: string, file: string, kind: EntryKind, name: string): ConfigEntry {
  const raw = parseJson(text, file);
  let e: ConfigEntry;
  try {
    e = parseEntry(raw, file);
  } catch (err) {
    // EntryError messages start with the `where` given, here the file, which StateError adds.
    if (err instanceof EntryError) throw new StateError(file, err.message.startsWith(file) ? err.message.slice(file.length).replace(/^[.:]\s*/, "") : err.message);
    throw err;
  }
  if (e.kind !== kind || e.name !== name) throw new StateError(file, `holds ${e.kind} "${e.name}"; it belongs in ${join("config", e.kind, `${e.name}.json`)} under the state directory`);
  return e;
}

/**
 * Reads every config entry. A missing config/ or config/<kind>/ directory was deleted (openStateDir
 * creates them all) and is a problem, not "no entries": the previous entries stay in force.
 */
export async function readEntries(dir: string): Promise<EntriesRead> {
  const entries: ConfigEntry[] = [];
  const problems: StateError[] = [];
  const root = paths(dir).entries;
  if (!(await exists(root).catch(() => true))) {
    const mk = `mkdir -p ${ENTRY_KINDS.map((k) => join(root, k)).join(" ")}`;
    return { entries, problems: [new StateError(root, `missing (deleted?); restore it, or create it empty ("${mk}") to have no config entries`)] };
  }
  for (const kind of ENTRY_KINDS) {
    const kdir = join(root, kind);
    let names: string[];
    try {
      names = await readdir(kdir);
    } catch (e) {
      const why = errnoOf(e) === "ENOENT" ? `missing (deleted?); restore it, or create it empty ("mkdir -p ${kdir}") to have no ${kind} entries` : `cannot be read (${messageOf(e)})`;
      problems.push(new StateError(kdir, why));
      continue;
    }
    for (const name of names.sort()) {
      if (!name.endsWith(".json")) continue;
      const file = join(kdir, name);
      try {
        entries.push(parseEntryFile(await readRegularFile(file), file, kind, name.slice(0, -".json".length)));
      } catch (e) {
        if (e instanceof StateError) problems.push(e);
        else if (errnoOf(e) !== "ENOENT") problems.push(new StateError(file, `cannot be read (${messageOf(e)})`));
      }
    }
  }
  return { entries, problems };
}

/** Stores an entry exactly as given (Consul's JSON), after checking that it parses. */
export async function writeEntry(dir: string, raw: unknown, source: string): Promise<ConfigEntry> {
  return (await writeEntryCas(dir, raw, source, undefined)).entry;
}

/**
 * The dev control plane's ModifyIndex: a digest of the entry file's bytes. Whoever read the entry
 * and writes it back with this version overwrites nothing written in between.
 */
export function entryVersion(text: string): string {
  return createHash("sha256").update(text).digest("hex").slice(0, 16);
}

/** An entry file's JSON and version, null when there is none. Read errors other than absence throw. */
export async function readEntryVersioned(dir: string, kind: EntryKind, name: string): Promise<{ readonly raw: unknown; readonly version: string } | null> {
  const file = entryFile(dir, kind, name);
  const text = await readEntryText(file);
  return text === null ? null : { raw: parseJson(text, file), version: entryVersion(text) };
}

async function readEntryText(file: string): Promise<string | null> {
  try {
    return await readRegularFile(file);
  } catch (e) {
    if (errnoOf(e) === "ENOENT") return null;
    throw new StateError(file, `cannot be read (${messageOf(e)})`);
  }
}

/**
 * Writes an entry under its lock. With `cas` (Consul's `-cas`), only when the file still has that
 * version (null: only when there is no such entry yet); `written` is false otherwise. Every
 * write goes through the lock, so a compare and its write are never split by another meshproxy.
 */
export async function writeEntryCas(dir: string, raw: unknown, source: string, cas: { readonly version: string | null } | undefined): Promise<{ entry: ConfigEntry; written: boolean }> {
  const e = parseEntry(raw, source);
  if (!isValidServiceName(e.name)) throw new EntryError(`${source}: Name`, `"${e.name}" is not a valid name (letters, digits, - _ .)`);
  const file = entryFile(dir, e.kind, e.name);
  await mkdir(join(paths(dir).entries, e.kind), { recursive: true, mode: 0o755 });
  return withLock(file, async () => {
    if (cas) {
      const now = await readEntryText(file);
      if ((now === null ? null : entryVersion(now)) !== cas.version) return { entry: e, written: false };
    }
    await atomicWrite(file, JSON.stringify(raw, null, 2) + "\n");
    return { entry: e, written: true };
  });
}

export async function deleteEntry(dir: string, kind: EntryKind, name: string): Promise<boolean> {
  const file = entryFile(dir, kind, name);
  try {
    await rm(file);
    return true;
  } catch {
    return false;
  }
}

/** An entry's stored JSON as written, or null when there is none. */
async function readStoredEntry(dir: string, kind: EntryKind, name: string): Promise<{ raw: unknown; file: string } | null> {
  const file = entryFile(dir, kind, name);
  let text: string;
  try {
    text = await readRegularFile(file);
  } catch (e) {
    if (errnoOf(e) === "ENOENT") return null;
    throw new StateError(file, `cannot be read (${messageOf(e)})`);
  }
  return { raw: parseJson(text, file), file };
}

/**
 * Replaces the legs of `service`'s service-splitter with `weights` (the admin API's traffic page),
 * as `meshproxy config write` would store it. Compare-and-set on the splitter as read (as the
 * Consul control plane's `?cas=`): a change written in between (a human, `meshproxy canary`) is
 * never overwritten, it is refused as a conflict. Proxies pick it up like any edit.
 */
export async function writeSubsetWeights(dir: string, service: string, weights: readonly SubsetWeight[]): Promise<void> {
  // An entry that does not load is the operator's to fix, never something to write over.
  const loaded = async <T>(read: () => Promise<T>): Promise<T> => {
    try {
      return await read();
    } catch (e) {
      if (e instanceof StateError) throw new SplitChangeError("conflict", `${e.message}; fix it first`);
      throw e;
    }
  };
  const r = await loaded(() => readStoredEntry(dir, "service-resolver", service));
  const versioned = await loaded(() => readEntryVersioned(dir, "service-splitter", service));
  const resolver = r ? storedResolver(r.raw, service, r.file) : null;
  const file = entryFile(dir, "service-splitter", service);
  const current = versioned ? { raw: versioned.raw, parsed: storedSplitter(versioned.raw, service, file) } : null;
  const { written } = await writeEntryCas(dir, splitterWithWeights(service, current, resolver, weights), "admin API", { version: versioned?.version ?? null });
  if (!written) throw new SplitChangeError("conflict", `service-splitter "${service}" changed since it was read; reload and try again`);
}
