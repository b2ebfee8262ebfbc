// The chaos schedule: a seeded, printable list of fault events. The same seed and duration give the
// same schedule. Events run one at a time (a fault's blast radius is then never confused with
// another's), after a warm-up and before a cool-down with none, and every kind appears in each
// cycle in a seeded order. Leaf renewals are not scheduled: the leaf TTL is set so that every
// sidecar renews about once a minute on its own (60–90 % of a 90 s lifetime, as Consul's agent).

/** mulberry32: a small, well-mixed 32-bit PRNG; enough for a schedule, not for cryptography. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The fault kinds, what each does and how long it lasts (s). `targets` are drawn from by the seed.
 * Durations are the fault's own; the harness adds the settle time of the blast radius.
 */
export const KINDS = {
  kill: { what: "SIGKILL a sidecar or dc2's mesh gateway, restart it after `down` s", targets: ["api-v1b", "echo-b", "api-v2", "gw-dc2"], dur: (o) => o.down + 3 },
  drain: { what: "SIGTERM a sidecar with requests in flight (it drains), restart it once it exited", targets: ["api-v1a", "echo-a"], dur: (o) => o.drainTimeout + 4 },
  hang: { what: "an app holds every request (slower than its callers), released after `hold` s", targets: ["api-v2", "api-v1b"], dur: (o) => o.hold },
  reset: { what: "an app resets every connection (TCP RST) for `hold` s", targets: ["api-v1a", "api-v2"], dur: (o) => o.hold },
  // Temporary, as every fault: the base split (90/10) comes back after `hold` s, so the leak check
  // compares samples taken under the same traffic (an instance's descriptors follow its share).
  weights: { what: "new split weights for api, POSTed to web's admin /splits/api; the base 90/10 restored after `hold` s", targets: ["v1:50,v2:50", "v1:10,v2:90", "v1:100,v2:0", "v1:0,v2:100"], dur: (o) => o.hold },
  deny: { what: "intention intruder → api flipped to deny, back to allow after `hold` s", targets: ["intruder"], dur: (o) => o.hold },
  corrupt: { what: "intentions.json and the api splitter overwritten with garbage, repaired after `hold` s", targets: ["intentions.json+service-splitter/api.json"], dur: (o) => o.hold },
  burst: { what: "N connections at once to web's echo upstream listener, held a few s", targets: ["web:echo"], dur: (o) => o.burstHold + 2 },
  fdx: { what: "file-descriptor exhaustion: connections beyond `ulimit -n` to the tight sidecar's echo upstream listener, held", targets: ["tight:echo"], dur: (o) => o.burstHold + 2 },
  // Each cycle rotates again: the trust bundle stays at two roots (the one before last is retired).
  rootRotation: { what: "`meshproxy ca rotate` on the dev state directory; done when every sidecar's /certs shows a leaf from the new root", targets: ["ca"], dur: () => 5 },
};

export function buildSchedule({ seed, durationS, warmupS, cooldownS, gapS, opts }) {
  const rand = prng(seed);
  const pick = (xs) => xs[Math.floor(rand() * xs.length)];
  const events = [];
  let t = warmupS;
  const end = durationS - cooldownS;
  for (let cycle = 0; ; cycle++) {
    const kinds = Object.keys(KINDS);
    for (let i = kinds.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [kinds[i], kinds[j]] = [kinds[j], kinds[i]];
    }
    for (const kind of kinds) {
      const d = KINDS[kind].dur(opts);
      if (t + d > end) return events;
      events.push({ n: events.length + 1, at: Math.round(t), kind, target: pick(KINDS[kind].targets), dur: d });
      t += d + gapS * (0.5 + rand());
    }
  }
}

export function renderSchedule(events) {
  return events.map((e) => `  t+${String(e.at).padStart(5)}s  #${String(e.n).padEnd(3)} ${e.kind.padEnd(12)} ${e.target}`).join("\n");
}
