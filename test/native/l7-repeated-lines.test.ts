// A field sent on several lines, at the Connect-native gate. The sidecar sends its app only the
// first line of the fields node:http keeps once (Authorization, User-Agent, Host, …), so judging
// that line is right there; a native app is handed node's own request, whose rawHeaders and
// headersDistinct hold every line. So the gate judges every line of a field a permission reads,
// those fields included, as the sidecar judges the other repeated fields: a request its
// permissions could both allow and deny on the app's readings is refused before the handler.
import t from "tap";
import { tempDir } from "../helpers/mesh.js";
import { configWrite } from "../helpers/l7.js";
import { leafFor, readDevCa, tlsExchange } from "../helpers/certs.js";
import { intentions, serve, serveHttp2, service } from "../helpers/native.js";

const PERMISSIONS = [
  { action: "deny", http: { header: [{ name: "authorization", exact: "Bearer admin" }] } },
  { action: "deny", http: { header: [{ name: "user-agent", prefix: "scanner" }] } },
  { action: "deny", http: { header: [{ name: "host", exact: "admin.internal" }] } },
  { action: "allow", http: { path_prefix: "/svc/", header: [{ name: "authorization", prefix: "Bearer svc-" }] } },
  // RE2 matches the whole value: the lines joined (a Fetch API Headers' reading) do not match.
  { action: "allow", http: { path_prefix: "/strict/", header: [{ name: "authorization", regex: "Bearer svc-[a-z]+" }] } },
  { action: "allow", http: { path_prefix: "/open/" } },
];

/** A request head for `path` with the field lines given (name, value, …), on a closing connection. */
function head(path: string, ...lines: string[]): string {
  let h = `GET ${path} HTTP/1.1\r\n`;
  if (!lines.some((l, i) => i % 2 === 0 && l.toLowerCase() === "host")) h += "host: api\r\n";
  for (let i = 0; i + 1 < lines.length; i += 2) h += `${lines[i]}: ${lines[i + 1]}\r\n`;
  return `${h}connection: close\r\n\r\n`;
}

t.test("HTTP/1.1: every line of Authorization, User-Agent and Host is judged, and the handler never sees a request some reading of them denies", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await intentions(dir, "deny", [{ source: "web", destination: "api", permissions: PERMISSIONS }]);
  const api = await service(t, { name: "api", dataDir: dir });
  const handled: string[] = [];
  const served = await serve(t, api, (req, res) => {
    // What a handler may read: every line, as node:http hands them over.
    handled.push(`${req.url} ${JSON.stringify(req.headersDistinct["authorization"] ?? [])}`);
    res.end("ok");
  });
  const ca = await readDevCa(dir);
  const web = await leafFor(ca, "web");
  const send = async (h: string) => {
    const text = (await tlsExchange(`127.0.0.1:${served.port}`, h, web)).data.toString();
    return { status: text.split("\r\n")[0], body: text.slice(text.indexOf("\r\n\r\n") + 4) };
  };

  // One line: judged as before.
  t.match(await send(head("/open/a", "Authorization", "Bearer admin")), { status: "HTTP/1.1 403 Forbidden", body: /permission 1: deny/ }, "one line: a deny on it holds");
  t.match(await send(head("/open/b", "Authorization", "Bearer user")), { status: "HTTP/1.1 200 OK" }, "one line: anything else is served");
  t.match(await send(head("/open/c", "User-Agent", "scanner/1")), { status: "HTTP/1.1 403 Forbidden", body: /permission 2: deny/ }, "one User-Agent line: a deny on it holds");

  // Two lines, crosswise: the gate used to judge the first alone, the handler could read the second.
  const crossed = await send(head("/open/d", "Authorization", "Bearer user", "Authorization", "Bearer admin"));
  t.match(crossed, { status: "HTTP/1.1 403 Forbidden", body: /^Repeated header lines: L7 intention web => api allows some readings/ }, "Bearer user then Bearer admin does not pass a deny on admin");
  t.match(await send(head("/open/e", "Authorization", "Bearer admin", "Authorization", "Bearer user")), { status: "HTTP/1.1 403 Forbidden" }, "nor Bearer admin then Bearer user");
  t.match(await send(head("/open/f", "user-agent", "curl/8", "User-Agent", "scanner/1")), { status: "HTTP/1.1 403 Forbidden", body: /^Repeated header lines: / }, "a second User-Agent line does not pass a deny on it");
  t.match(await send(head("/open/g", "Host", "api", "Host", "admin.internal")), { status: "HTTP/1.1 403 Forbidden", body: /^Repeated header lines: / }, "a second Host line does not pass a deny on host");
  t.match(await send(head("/svc/h", "Authorization", "Bearer svc-a", "Authorization", "Bearer other")), { status: "HTTP/1.1 403 Forbidden", body: /^Repeated header lines: / }, "an allow on a prefix is not passed by its first line alone");
  t.match(await send(head("/strict/i", "Authorization", "Bearer svc-a", "Authorization", "Bearer svc-b")), { status: "HTTP/1.1 403 Forbidden", body: /^Repeated header lines: / }, "the lines joined are a reading too: each line passes the allow, joined they do not");

  // Repeated lines every reading allows: still served, every line handed over.
  t.match(await send(head("/svc/j", "Authorization", "Bearer svc-a", "Authorization", "Bearer svc-b")), { status: "HTTP/1.1 200 OK" }, "repeated lines every reading allows are served");
  t.match(await send(head("/open/k", "User-Agent", "curl/8", "User-Agent", "undici")), { status: "HTTP/1.1 200 OK" }, "so are User-Agent lines no deny matches");

  // The limit on the lines of a field a permission reads is the sidecar's: 32.
  const many = (n: number) => Array.from({ length: n }, () => ["Authorization", "Bearer user"]).flat();
  t.match(await send(head("/open/l", ...many(32))), { status: "HTTP/1.1 200 OK" }, "32 lines are judged");
  t.match(await send(head("/open/m", ...many(33))), { status: "HTTP/1.1 403 Forbidden", body: /more than 32 lines/ }, "33 are refused");

  t.same(
    handled,
    ['/open/b ["Bearer user"]', '/svc/j ["Bearer svc-a","Bearer svc-b"]', "/open/k []", `/open/l ${JSON.stringify(Array.from({ length: 32 }, () => "Bearer user"))}`],
    "the handler was called only for the requests every reading allows",
  );
});

t.test("HTTP/2: :authority and a host field that disagree are both judged (node's req.authority reads the first, req.headers.host the second)", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http2" });
  await intentions(dir, "deny", [{ source: "web", destination: "api", permissions: PERMISSIONS }]);
  const api = await service(t, { name: "api", dataDir: dir });
  const handled: string[] = [];
  const ca = await readDevCa(dir);
  const session = await serveHttp2(
    t,
    api,
    (req, res) => {
      handled.push(`${req.url} ${req.authority}`);
      res.end("ok");
    },
    await leafFor(ca, "web"),
    ca,
  );
  const get = (headers: Record<string, string>) =>
    new Promise<number>((resolve, reject) => {
      const s = session.request(headers);
      s.on("response", (h) => resolve(Number(h[":status"])));
      s.on("error", reject);
      s.resume();
      s.end();
    });
  t.equal(await get({ ":path": "/open/a", ":authority": "admin.internal", host: "api" }), 403, ":authority admin.internal with host api does not pass a deny on host");
  t.equal(await get({ ":path": "/open/b", ":authority": "api", host: "admin.internal" }), 403, "nor the other way round");
  t.equal(await get({ ":path": "/open/c", ":authority": "api", host: "api" }), 200, "the two agreeing are served");
  t.equal(await get({ ":path": "/open/d", ":authority": "api" }), 200, ":authority alone is served");
  t.same(handled, ["/open/c api", "/open/d api"], "the handler saw only the requests every reading allows");
});
