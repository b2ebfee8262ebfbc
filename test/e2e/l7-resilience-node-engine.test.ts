// The same retries, timeouts, breakers and balancing as l7-resilience.test.ts, with upstream
// listeners on the node:http engine (MESHPROXY_HTTP1_CORE=node, also what a sidecar falls back
// to when the llhttp core's self-test fails on its Node): both outbound engines keep every rule.
process.env["MESHPROXY_HTTP1_CORE"] = "node";
await import("./l7-resilience.test.js");
