// Rotating the dev CA's root, as Consul's built-in CA does (shared/reference/consul-connect.md
// §3.7): a new root, cross-signed by the one it replaces, becomes active; both are trusted. Every
// proxy on the state directory notices roots.json change, trusts both roots at once, and
// re-issues its leaf from the new root, sending the cross-signed intermediate with it so a peer
// that has not noticed yet (trusting only the old root) still accepts it.
//
// The previous root leaves the trust bundle at the next rotation: the bundle is never more than
// two roots however often one rotates. Proxies re-issue within seconds of a rotation, so by the
// next one no leaf of the root before last is left; rotating twice within seconds would cut the
// proxies that had not re-issued yet, which `meshproxy ca rotate` says.
import { randomUUID, X509Certificate } from "node:crypto";
import { readRegularFile } from "../read-file.js";
import { createRootCa, crossSign } from "../../identity/ca.js";
import { serialOf } from "../../identity/serial.js";
import { withLock } from "./lock.js";
import { paths, parseCaConfig, readCaRoots, StateError, writeCaRoots } from "./state.js";

export interface Rotation {
  /** The new active root's id (its serial, colon-hex) and subject. */
  readonly rootId: string;
  readonly subject: string;
  /** The root it replaced, trusted until the next rotation. */
  readonly previousId: string;
  /** Roots no longer trusted after this rotation. */
  readonly retiredIds: readonly string[];
}

export async function rotateCa(dir: string): Promise<Rotation> {
  const p = paths(dir);
  let cfgText: string;
  try {
    cfgText = await readRegularFile(p.caConfig);
  } catch (e) {
    throw new StateError(p.caConfig, `cannot be read (${e instanceof Error ? e.message : String(e)}): there is no dev CA to rotate yet; start a sidecar on this -data-dir first (it creates the CA)`);
  }
  const { trustDomain } = parseCaConfig(cfgText, p.caConfig);
  // Two rotations at once would each cross-sign from the same old root, and the second written
  // would drop the first's root while leaves from it may already exist.
  return withLock(p.roots, async () => {
    const current = await readCaRoots(dir, { rotated: false });
    // A distinct subject per root: a leaf names its issuer by subject, and the cross-signed
    // intermediate must not look self-issued.
    const next = await createRootCa(trustDomain, { commonName: `meshproxy dev CA ${randomUUID().slice(0, 8)}` });
    const crossSignedPem = await crossSign(next, current);
    await writeCaRoots(dir, { ...next, crossSignedPem }, [current.certPem]);
    return {
      rootId: serialOf(next.certPem),
      subject: new X509Certificate(next.certPem).subject.replace(/\n/g, ", "),
      previousId: current.rootId,
      retiredIds: current.rootsPem.slice(1).map(serialOf),
    };
  });
}
