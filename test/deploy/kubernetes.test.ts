// The pod manifest: its timings and resources agree with the proxy's flags and measured figures,
// its probes are the image's HEALTHCHECK, and (when .ci/run provides the schema packages in
// MESHPROXY_K8S_MODULES) it validates against Kubernetes' OpenAPI schema for a v1 Pod.
import t from "tap";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ROOT, tempDir } from "../helpers/mesh.js";
import { runCommand } from "../helpers/peers.js";

const POD = join(ROOT, "deploy", "kubernetes", "pod.yaml");
const VALIDATE = join(ROOT, "deploy", "kubernetes", "validate.mjs");
const modules = process.env["MESHPROXY_K8S_MODULES"];

function one(text: string, re: RegExp, what: string): string {
  const m = re.exec(text);
  if (!m?.[1]) throw new Error(`${what} not found in deploy/kubernetes/pod.yaml`);
  return m[1];
}

/** Kubernetes quantities as bytes (only the binary suffixes the manifest uses). */
function bytes(q: string): number {
  const m = /^(\d+)(Ki|Mi|Gi)$/.exec(q);
  if (!m) throw new Error(`unexpected memory quantity ${q}`);
  return Number(m[1]) * { Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3 }[m[2] as "Ki" | "Mi" | "Gi"];
}

t.test("grace period, preStop and -drain-timeout fit together; requests cover the measured RSS", async (t) => {
  const pod = await readFile(POD, "utf8");
  const drain = Number(one(pod, /- -drain-timeout\n\s+- (\d+)s\n/, "-drain-timeout"));
  const grace = Number(one(pod, /terminationGracePeriodSeconds: (\d+)/, "terminationGracePeriodSeconds"));
  const preStop = Number(one(pod, /preStop:\n\s+exec:\n\s+command: \["\/bin\/sleep", "(\d+)"\]/, "preStop sleep"));
  t.ok(preStop + drain < grace, `preStop ${preStop}s + drain ${drain}s < terminationGracePeriodSeconds ${grace}s: the kubelet's SIGKILL never cuts a drain`);

  const results = await readFile(join(ROOT, "bench", "RESULTS.md"), "utf8");
  const peakMb = Number(one(results, /\| peak RSS per proxy under load[^|]*\| MB \| [^|]* \| ([\d.]+) \|/, "peak RSS"));
  const idleConnsMb = Number(one(results, /\| peak RSS per proxy holding [\d,]+ idle connections[^|]*\| MB \| [^|]* \| ([\d.]+) \|/, "RSS with idle connections"));
  const request = bytes(one(pod, /requests:\n\s+cpu: \S+\n\s+memory: (\S+)/, "memory request"));
  const limit = bytes(one(pod, /limits:\n\s+memory: (\S+)/, "memory limit"));
  t.ok(request >= peakMb * 1e6, `memory request ${request / 2 ** 20} Mi covers the measured peak RSS under load (${peakMb} MB)`);
  t.ok(limit >= idleConnsMb * 1e6, `memory limit ${limit / 2 ** 20} Mi covers the RSS measured holding ~10k idle connections (${idleConnsMb} MB)`);

  const dockerfile = await readFile(join(ROOT, "Dockerfile"), "utf8");
  const healthcheck = one(dockerfile, /HEALTHCHECK[^\n]*\\\n\s+CMD (\[.*\])/, "HEALTHCHECK");
  const readiness = one(pod, /readinessProbe:\n\s+exec:\n\s+command: (\[.*\])/, "readinessProbe");
  t.same(JSON.parse(readiness), JSON.parse(healthcheck), "the readiness probe is the image's HEALTHCHECK (/ready: 503 until serving and while draining)");
  t.match(pod, /restartPolicy: Always/, "meshproxy is a native sidecar: started before the app, stopped after it");
  t.match(pod, /runAsNonRoot: true/, "the pod refuses to run as root");
  t.match(pod, /- -admin-addr\n\s+- 127\.0\.0\.1:19000/, "the admin API (which can drain the proxy) stays on the pod's loopback");
});

t.test("the manifest validates against the v1 Pod schema", { skip: modules ? false : "MESHPROXY_K8S_MODULES is not set (.ci/run installs kubernetes-models and yaml there)" }, async (t) => {
  const ok = await runCommand(t, process.execPath, [VALIDATE, modules!, POD]);
  t.equal(ok.code, 0, `valid ${ok.stderr}`);
  t.match(ok.stdout, /Pod web: valid v1 Pod/, "the validator reports the pod valid");
  const dir = await tempDir(t, "meshproxy-k8s-");
  const bad = join(dir, "bad.yaml");
  await writeFile(bad, (await readFile(POD, "utf8")).replace("containerPort: 21000", 'containerPort: "21000"'));
  const refused = await runCommand(t, process.execPath, [VALIDATE, modules!, bad]);
  t.not(refused.code, 0, "and the same validator refuses a port given as a string");
  t.match(refused.stderr, /containerPort must be integer/, "naming the field");
});
