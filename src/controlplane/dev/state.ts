// The dev control plane's state directory, shared by every meshproxy on the machine:
//
//   <dir>/ca/config.json     trust domain, datacenter, leaf TTL (human-editable)
//   <dir>/ca/root.pem        the dev root CA certificate
//   <dir>/ca/root.key        its private key (0600)
//   <dir>/catalog/<id>.json  one file per registered service instance
//   <dir>/intentions.json    intentions (human-editable; `meshproxy intention ...` edits it)
//   <dir>/config/<kind>/<name>.json  Consul config entries (`meshproxy config write` puts them there)
//
// Every write is temp-file + rename, so a reader never sees half a file.
import { mkdir, readFile, writeFile, rename, readdir, rm, chmod, mkdtemp } from "node:fs/promises";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import type { CaMaterial } from "../../identity/ca.js";
import { createRootCaInWorker } from "../../identity/ca-worker.js";
import { parseDurationMs, formatDurationMs } from "../../config/duration.js";
import { isValidServiceName } from "../../config/validate.js";
import { parseEntry, parsePermissions, EntryError, ENTRY_KINDS, type ConfigEntry, type EntryKind } from "../chain/entries.js";
import { DEFAULTS, type Intention, type IntentionAction, type IntentionPolicy, type Protocol } from "../../config/snapshot.js";
import type { HeaderMatch, Permission } from "../../config/http.js";
import { CompiledL7Intentions, PermissionCompileError } from "../../authz/l7.js";

export interface CaConfig {
  readonly trustDomain: string;
  readonly datacenter: string;
  readonly leafTtlMs: number;
}

export interface DevCa extends CaMaterial {
  readonly config: CaConfig;
}

export interface CatalogEntry {
  readonly id: string;
  readonly service: string;
  readonly address: string;
  readonly port: number;
  readonly protocol: Protocol;
  readonly pid: number;
  readonly meta: Readonly<Record<string, string>>;
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

function parseCaConfig(text: string, file: string): CaConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new StateError(file, `not valid JSON (${(e as Error).message}); fix it or remove the ca/ directory to make a new CA`);
  }
  if (typeof raw !== "object" || raw === null) throw new StateError(file, "must be a JSON object");
  const o = raw as Record<string, unknown>;
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
  await mkdir(dir, { recursive: true, mode: 0o700 });
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
  const [certPem, keyPem, cfgText] = await Promise.all([readFile(p.rootCert, "utf8"), readFile(p.rootKey, "utf8"), readFile(p.caConfig, "utf8")]);
  return { certPem, keyPem, config: parseCaConfig(cfgText, p.caConfig), created };
}

// ---- catalog ----

export async function registerInstance(dir: string, entry: CatalogEntry): Promise<void> {
  const p = paths(dir);
  await mkdir(p.catalog, { recursive: true });
  await atomicWrite(join(p.catalog, `${entry.id}.json`), JSON.stringify(entry, null, 2) + "\n");
}

export async function deregisterInstance(dir: string, id: string): Promise<void> {
  await rm(join(paths(dir).catalog, `${id}.json`), { force: true });
}

function isCatalogEntry(v: unknown): v is CatalogEntry {
  if (typeof v !== "object" || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    typeof o["id"] === "string" &&
    typeof o["service"] === "string" &&
    typeof o["address"] === "string" &&
    typeof o["port"] === "number" &&
    typeof o["pid"] === "number" &&
    typeof o["protocol"] === "string"
  );
}

export interface CatalogRead {
  readonly entries: CatalogEntry[];
  /** Files that could not be read, with why; they are skipped, not fatal. */
  readonly problems: StateError[];
}

export async function readCatalog(dir: string): Promise<CatalogRead> {
  const p = paths(dir);
  let names: string[];
  try {
    names = await readdir(p.catalog);
  } catch {
    return { entries: [], problems: [] };
  }
  const entries: CatalogEntry[] = [];
  const problems: StateError[] = [];
  for (const name of names.sort()) {
    if (!name.endsWith(".json")) continue;
    const file = join(p.catalog, name);
    try {
      const v: unknown = JSON.parse(await readFile(file, "utf8"));
      if (isCatalogEntry(v)) entries.push(v);
      else problems.push(new StateError(file, "not a catalog entry (needs id, service, address, port, pid, protocol)"));
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code !== "ENOENT") problems.push(new StateError(file, err.message));
    }
  }
  return { entries, problems };
}

/** Same machine, so a dead process means a dead instance (covers kill -9 and crashes). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

// ---- intentions ----

export const DEFAULT_POLICY: IntentionPolicy = { defaultAction: "allow", intentions: [] };

/** Parses intentions.json; every message names the entry and field that is wrong. */
export function parseIntentions(text: string, file: string): IntentionPolicy {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new StateError(file, `not valid JSON (${(e as Error).message}); the previous intentions stay in force`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new StateError(file, "must be a JSON object");
  const o = raw as Record<string, unknown>;
  const def = o["default_action"] ?? "allow";
  if (def !== "allow" && def !== "deny") throw new StateError(file, `default_action must be "allow" or "deny", got ${JSON.stringify(def)}`);
  const list = o["intentions"] ?? [];
  if (!Array.isArray(list)) throw new StateError(file, "intentions must be an array");
  const intentions: Intention[] = list.map((v: unknown, i: number) => {
    const at = `intentions[${i}]`;
    if (typeof v !== "object" || v === null) throw new StateError(file, `${at} must be an object`);
    const e = v as Record<string, unknown>;
    const { source, destination, action, description } = e;
    for (const [k, val] of [["source", source], ["destination", destination]] as const) {
      if (typeof val !== "string" || (val !== "*" && !isValidServiceName(val))) {
        throw new StateError(file, `${at}.${k} must be a service name or "*", got ${JSON.stringify(val)}`);
      }
    }
    const permissions = parseIntentionPermissions(e["permissions"] ?? e["Permissions"], file, `${at}.permissions`);
    if (permissions.length > 0) {
      // As Consul: an L7 intention's permissions decide, and a request matching none gets the
      // default action; an action beside them would read as a fallback it is not.
      if (action !== undefined) throw new StateError(file, `${at}: omit action when permissions are given (a request matching no permission gets default_action)`);
      // The stored action is what a connection-level check does with an L7 intention: deny.
      const it: Intention = { source: source as string, destination: destination as string, action: "deny", permissions };
      return typeof description === "string" ? { ...it, description } : it;
    }
    if (action !== "allow" && action !== "deny") throw new StateError(file, `${at}.action must be "allow" or "deny", got ${JSON.stringify(action)}`);
    const it: Intention = { source: source as string, destination: destination as string, action };
    return typeof description === "string" ? { ...it, description } : it;
  });
  const seen = new Set<string>();
  intentions.forEach((it, i) => {
    const key = `${it.source} => ${it.destination}`;
    if (seen.has(key)) throw new StateError(file, `intentions[${i}]: a second intention for ${key}; keep one`);
    seen.add(key);
  });
  const policy: IntentionPolicy = { defaultAction: def as IntentionAction, intentions };
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

export async function readIntentions(dir: string): Promise<IntentionPolicy> {
  const file = paths(dir).intentions;
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return DEFAULT_POLICY;
    throw new StateError(file, (e as Error).message);
  }
  return parseIntentions(text, file);
}

export async function writeIntentions(dir: string, policy: IntentionPolicy): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
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

export function entryFile(dir: string, kind: EntryKind, name: string): string {
  return join(paths(dir).entries, kind, `${name}.json`);
}

export async function readEntries(dir: string): Promise<EntriesRead> {
  const entries: ConfigEntry[] = [];
  const problems: StateError[] = [];
  for (const kind of ENTRY_KINDS) {
    const kdir = join(paths(dir).entries, kind);
    let names: string[];
    try {
      names = await readdir(kdir);
    } catch {
      continue;
    }
    for (const name of names.sort()) {
      if (!name.endsWith(".json")) continue;
      const file = join(kdir, name);
      try {
        const e = parseEntry(JSON.parse(await readFile(file, "utf8")), file);
        if (e.kind !== kind || `${e.name}.json` !== name) problems.push(new StateError(file, `holds ${e.kind} "${e.name}"; it belongs in ${entryFile(dir, e.kind, e.name)}`));
        else entries.push(e);
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        if (err.code !== "ENOENT") problems.push(new StateError(file, err.message));
      }
    }
  }
  return { entries, problems };
}

/** Stores an entry exactly as given (Consul's JSON), after checking that it parses. */
export async function writeEntry(dir: string, raw: unknown, source: string): Promise<ConfigEntry> {
  const e = parseEntry(raw, source);
  const file = entryFile(dir, e.kind, e.name);
  await mkdir(join(paths(dir).entries, e.kind), { recursive: true });
  await atomicWrite(file, JSON.stringify(raw, null, 2) + "\n");
  return e;
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
