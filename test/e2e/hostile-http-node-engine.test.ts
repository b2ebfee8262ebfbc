// The same hostile and unusual HTTP/1.x as hostile-http.test.ts, with the public listener on
// the node:http engine (MESHPROXY_HTTP1_CORE=node, also what a sidecar falls back to when the
// llhttp core's self-test fails on its Node), so both engines keep every protection.
process.env["MESHPROXY_HTTP1_CORE"] = "node";
await import("./hostile-http.test.js");
