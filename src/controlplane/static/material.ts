// The static control plane's certificates: turns the text of the leaf, key and root PEM files
// into the Snapshot's Identity and TrustBundle, checking everything a hand-made set of files
// gets wrong (key from another cert, leaf from another CA, leaf for another service) so that
// it is reported against the config field that names the file, not found at the first handshake.
import { X509Certificate, createPrivateKey, type KeyObject } from "node:crypto";
import { colonHexSerial } from "../../identity/serial.js";
import { firstUriSan, parseServiceSpiffeId } from "../../identity/spiffe.js";
import { chainsToRoot } from "../../identity/chain.js";
import { DEFAULTS, type Identity, type TrustBundle } from "../../config/snapshot.js";
import { StaticConfigError, type StaticConfig } from "./config.js";

/** The PEM files' contents, as read from the paths in a StaticConfig. */
export interface PemTexts {
  readonly cert: string;
  readonly key: string;
  /** One entry per `roots_files` entry, same order. */
  readonly roots: readonly string[];
}

export interface Material {
  readonly identity: Identity;
  readonly trust: TrustBundle;
  /** Suspicious but usable (an expired leaf, an overridden trust domain): logged, not fatal. */
  readonly warnings: readonly string[];
}

const CERT_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

interface Parsed {
  readonly pem: string;
  readonly cert: X509Certificate;
}

/**
 * Builds the identity and trust bundle. Throws StaticConfigError naming the config field
 * (`identity.cert_file`, `roots_files[1]`, `service`, ...) whose file or value is wrong.
 */
export function buildMaterial(cfg: StaticConfig, texts: PemTexts, configFile: string, now = new Date()): Material {
  const fail = (path: string, reason: string): never => {
    throw new StaticConfigError(configFile, path, reason);
  };
  const certFile = cfg.identity.certFile;
  const chain = certificates(texts.cert, (reason) => fail("identity.cert_file", `${certFile}: ${reason}`));
  const leaf = chain[0];
  if (!leaf) return fail("identity.cert_file", `${certFile}: no PEM certificate found (want "-----BEGIN CERTIFICATE-----" blocks, leaf first)`);
  if (leaf.cert.ca) fail("identity.cert_file", `${certFile}: the first certificate is a CA certificate (${leaf.cert.subject}); put the leaf first, then any intermediates`);

  const keyFile = cfg.identity.keyFile;
  let key: KeyObject;
  try {
    key = createPrivateKey(texts.key);
  } catch (e) {
    return fail("identity.key_file", `${keyFile}: not a PEM private key (${errorText(e)}); an unencrypted PKCS#8, SEC1 or PKCS#1 key is needed`);
  }
  if (key.asymmetricKeyType !== leaf.cert.publicKey.asymmetricKeyType || !leaf.cert.checkPrivateKey(key)) {
    fail("identity.key_file", `${keyFile}: does not match the leaf certificate in ${certFile} (was one replaced without the other?)`);
  }

  const uri = firstUriSan(leaf.cert.subjectAltName);
  const spiffe = "spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>";
  if (!uri) return fail("identity.cert_file", `${certFile}: the leaf has no URI SAN; a mesh leaf carries its SPIFFE ID (${spiffe})`);
  const id = parseServiceSpiffeId(uri);
  if (!id) return fail("identity.cert_file", `${certFile}: the leaf's URI SAN ${uri} is not a SPIFFE service ID (${spiffe})`);
  if (id.service !== cfg.service) {
    fail("service", `"${cfg.service}", but the leaf certificate ${certFile} is for service "${id.service}" (${uri}); issue a leaf for "${cfg.service}" or correct service`);
  }
  if (id.datacenter !== cfg.datacenter) {
    fail("datacenter", `"${cfg.datacenter}", but the leaf certificate ${certFile} is for datacenter "${id.datacenter}" (${uri}); set datacenter to "${id.datacenter}" (the default is "${DEFAULTS.datacenter}")`);
  }
  if (id.namespace !== DEFAULTS.namespace || id.partition !== "default") {
    fail("identity.cert_file", `${certFile}: the leaf is for namespace "${id.namespace}", partition "${id.partition}" (${uri}); the static control plane supports only the default namespace and partition`);
  }

  const roots: Parsed[] = [];
  cfg.rootsFiles.forEach((file, i) => {
    const found = certificates(texts.roots[i] ?? "", (reason) => fail(`roots_files[${i}]`, `${file}: ${reason}`));
    if (found.length === 0) fail(`roots_files[${i}]`, `${file}: no PEM certificate found (want "-----BEGIN CERTIFICATE-----" blocks)`);
    roots.push(...found);
  });
  if (!chainsToRoot(leaf.cert, chain.slice(1).map((c) => c.cert), roots.map((r) => r.cert))) {
    fail("identity.cert_file", `${certFile}: the leaf (issuer ${oneLine(leaf.cert.issuer)}) is not signed by any certificate in roots_files; add its CA root to roots_files or issue the leaf from one of them`);
  }

  const warnings: string[] = [];
  const trustDomain = cfg.trustDomain ?? id.trustDomain;
  if (trustDomain !== id.trustDomain) {
    warnings.push(`trust_domain "${trustDomain}" differs from the leaf's (${id.trustDomain}): peers will be required to be in ${trustDomain}`);
  }
  const notBefore = new Date(leaf.cert.validFrom);
  const notAfter = new Date(leaf.cert.validTo);
  if (notAfter.getTime() <= now.getTime()) warnings.push(`the leaf certificate ${certFile} expired at ${notAfter.toISOString()}; peers will refuse it until it is replaced`);
  else if (notBefore.getTime() > now.getTime()) warnings.push(`the leaf certificate ${certFile} is not valid before ${notBefore.toISOString()}; check the clocks`);

  const keyPem = key.export({ type: "pkcs8", format: "pem" });
  return {
    identity: {
      service: cfg.service,
      namespace: DEFAULTS.namespace,
      datacenter: cfg.datacenter,
      trustDomain,
      spiffeId: uri,
      certChainPem: chain.map((c) => c.pem).join(""),
      privateKeyPem: typeof keyPem === "string" ? keyPem : keyPem.toString("utf8"),
      serial: colonHexSerial(leaf.cert.serialNumber),
      notBefore,
      notAfter,
    },
    trust: { trustDomain, rootsPem: roots.map((r) => r.pem) },
    warnings,
  };
}

/** Every certificate block in a PEM text, in order; `bad` is called for one that does not parse. */
function certificates(text: string, bad: (reason: string) => never): Parsed[] {
  return [...text.matchAll(CERT_BLOCK)].map((m, i) => {
    const pem = `${m[0]}\n`;
    try {
      return { pem, cert: new X509Certificate(pem) };
    } catch (e) {
      return bad(`certificate ${i + 1} in the file is not valid (${errorText(e)})`);
    }
  });
}

function oneLine(dn: string): string {
  return dn.split("\n").join(", ");
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
