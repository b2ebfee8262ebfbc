// A route's IdleTimeout: an answer that goes silent for longer than it is cut off, while an
// answer that keeps coming (slowly, but within the idle timeout) is delivered whole.
import t from "tap";
import { request } from "undici";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { configWrite, httpApp } from "../helpers/l7.js";

t.test("IdleTimeout cuts a silent answer and spares a slow one", async (t) => {
  const dir = await tempDir(t);
  const app = await httpApp(t, "api", (req, res) => {
    req.resume();
    res.writeHead(200, { "content-type": "text/plain" });
    res.write("first chunk\n");
    // /stall goes quiet for 10 s, five idle timeouts; /trickle sends a chunk every 100 ms, a 20th
    // of one. (With a 400 ms idle timeout and a 1.5 s stall, a loaded machine's pause of a second
    // could let the stall's end, or a trickle's gap, win the race.)
    if (req.url === "/stall") {
      const late = setTimeout(() => res.end("late\n"), 10_000);
      res.once("close", () => clearTimeout(late));
      return;
    }
    let n = 0;
    const timer = setInterval(() => {
      if (++n === 5) {
        clearInterval(timer);
        res.end("last\n");
      } else res.write(`chunk ${n}\n`);
    }, 100);
  });
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await configWrite(t, dir, { Kind: "service-router", Name: "api", Routes: [{ Match: { HTTP: { PathPrefix: "/" } }, Destination: { IdleTimeout: "2s" } }] });
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);

  const slow = await request(`http://${web.upstreams["api"]}/trickle`);
  t.equal(await slow.body.text(), "first chunk\nchunk 1\nchunk 2\nchunk 3\nchunk 4\nlast\n", "an answer with 100 ms gaps arrives whole");

  const silent = await request(`http://${web.upstreams["api"]}/stall`);
  t.equal(silent.statusCode, 200, "the head had already been sent");
  const started = performance.now();
  const outcome = await silent.body.text().then(
    (b) => `complete: ${JSON.stringify(b)}`,
    (e: unknown) => `cut: ${e instanceof Error ? e.message : String(e)}`,
  );
  t.match(outcome, /^cut: /, `the silent answer is cut off after ${(performance.now() - started).toFixed(0)} ms, before the app would have finished`);
});
