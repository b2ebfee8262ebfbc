// Test helpers for mesh gateways: a real `meshproxy -gateway mesh` process, and a tshark capture
// of a port on loopback (what an observer between datacenters would see).
import { spawn } from "node:child_process";
import { once } from "node:events";
import { connect as netConnect } from "node:net";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { runMeshproxy, tempDir, type MeshProcess, type Teardown } from "./mesh.js";
import { pollUntil } from "./peers.js";

export interface Gateway extends MeshProcess {
  readonly listen: string;
  readonly adminAddr: string;
}

/** Starts `meshproxy -gateway mesh -datacenter <dc>` on 127.0.0.1:0 and waits until it is ready. */
export async function startGateway(t: Teardown, dir: string, dc: string, extra: string[] = []): Promise<Gateway> {
  const p = runMeshproxy(t, ["-gateway", "mesh", "-datacenter", dc, "-listen", "127.0.0.1:0", "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0", "-log-level", "debug", ...extra]);
  const ready = await p.waitForLog((l) => l["@message"] === "gateway ready");
  const admin = await p.waitForLog((l) => l["@message"] === "admin API listening");
  return Object.assign(p, { listen: String(ready["listen"]), adminAddr: String(admin["address"]) });
}

export interface Capture {
  /** Flushes (a plain sentinel connection must reach the file), stops tshark, returns the pcap's bytes. */
  finish(): Promise<Buffer>;
  /** The server names tshark decodes from the ClientHellos in the capture (after finish()). */
  serverNames(): Promise<string>;
}

/** Captures `tcp port <port>` on lo with tshark; resolves once the capture has really started. */
export async function startCapture(t: Teardown, port: number): Promise<Capture> {
  const capDir = await tempDir(t);
  const pcap = join(capDir, "capture.pcap");
  const cap = spawn("tshark", ["-i", "lo", "-f", `tcp port ${port}`, "-w", pcap], { stdio: ["ignore", "ignore", "pipe"] });
  t.teardown(() => {
    if (cap.exitCode === null) cap.kill("SIGKILL");
  });
  let capErr = "";
  cap.stderr.setEncoding("utf8");
  await new Promise<void>((resolve, reject) => {
    cap.stderr.on("data", (d: string) => {
      capErr += d;
      // "Capturing on" comes before the capture really starts; this line comes after.
      if (/Capture started/.test(capErr)) resolve();
    });
    cap.once("exit", () => reject(new Error(`tshark exited before capturing: ${capErr}`)));
  });
  return {
    async finish() {
      // Captured packets reach the file in batches: a last plain connection is the sentinel, and
      // once it is in the file everything sent before it is too.
      const sentinel = "SENTINEL-NOT-TLS-7d1e";
      const s = netConnect({ host: "127.0.0.1", port });
      s.on("error", () => undefined);
      s.end(`${sentinel}\r\n`);
      await once(s, "close");
      const caught = await pollUntil(async () => (await readFile(pcap).catch(() => Buffer.alloc(0))).includes(sentinel), 15_000);
      if (caught === null) throw new Error("the capture did not catch up within 15 s");
      cap.kill("SIGINT");
      await once(cap, "exit");
      return readFile(pcap);
    },
    async serverNames() {
      // Not on 443, so tshark is told the port carries TLS.
      const fields = spawn("tshark", ["-r", pcap, "-d", `tcp.port==${port},tls`, "-Y", "tls.handshake.extensions_server_name", "-T", "fields", "-e", "tls.handshake.extensions_server_name"], { stdio: ["ignore", "pipe", "ignore"] });
      let names = "";
      fields.stdout.setEncoding("utf8").on("data", (d: string) => (names += d));
      await once(fields, "exit");
      return names;
    },
  };
}
