// Certificate serials in Consul's form: lowercase colon-hex, leading zero bytes stripped
// (Node reports uppercase hex without colons and may keep a leading 00).
import { X509Certificate } from "node:crypto";

export function colonHexSerial(hex: string): string {
  let h = hex.toLowerCase().replace(/^(00)+/, "");
  if (h.length % 2 === 1) h = `0${h}`;
  return (h.match(/../g) ?? ["00"]).join(":");
}

export function serialOf(certPem: string): string {
  return colonHexSerial(new X509Certificate(certPem).serialNumber);
}
