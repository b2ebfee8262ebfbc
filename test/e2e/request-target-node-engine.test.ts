// The same authorization bypasses as request-target.test.ts, with both sidecars' HTTP/1 on the
// node:http engine (MESHPROXY_HTTP1_CORE=node, also what a sidecar falls back to when the llhttp
// core's self-test fails on its Node), so both engines refuse the same targets and upgrades.
process.env["MESHPROXY_HTTP1_CORE"] = "node";
await import("./request-target.test.js");
