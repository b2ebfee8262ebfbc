// The live traffic page in a real browser (Debian's headless Chromium through playwright-core):
// it loads under its own strict CSP with no error, shows the figures of the traffic sent, is
// photographed, and its weight control changes the split through the dev control plane: the
// new weight shows on the page and the traffic moves.
import t from "tap";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { send, trafficMesh } from "../helpers/traffic-mesh.js";

const CHROMIUM = "/usr/bin/chromium";

/** The text of one figure of one subset's row. */
function cell(page: Page, subset: string, field: string): Promise<string> {
  return page.locator(`[data-service="api"] tr[data-subset="${subset}"] [data-field="${field}"]`).innerText();
}

/** Waits until a figure of a subset's row reads `text` (the page polls every second). */
async function waitForCell(page: Page, subset: string, field: string, text: string): Promise<void> {
  // Playwright's own selector engine, not a predicate evaluated in the page: the page's CSP forbids eval.
  await page.locator(`[data-service="api"] tr[data-subset="${subset}"] [data-field="${field}"]:text-is(${JSON.stringify(text)})`).waitFor({ timeout: 15_000 });
}

t.test("the traffic page shows the traffic sent and changes a weight", { timeout: 90_000, skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed (apt-get install chromium; .ci/run does)` }, async (t) => {
  const { dir, web, url } = await trafficMesh(t);
  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1200, height: 700 } });
  const problems: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("requestfailed", (r) => problems.push(`${r.url()}: ${r.failure()?.errorText ?? "failed"}`));

  await page.goto(`http://${web.adminAddr}/ui`);
  await waitForCell(page, "v2", "weight", "50.00 %");
  t.equal(await cell(page, "v1", "weight"), "50.00 %", "the page shows the splitter's weights");

  const sent = await send(url, 60);
  const v2Requests = sent.requests["v2"] ?? 0;
  const v2Errors = sent.errors["v2"] ?? 0;
  await waitForCell(page, "v2", "requests", String(v2Requests));
  await waitForCell(page, "v1", "requests", String(sent.requests["v1"] ?? 0));
  t.equal(await cell(page, "v2", "errors"), String(v2Errors), `v2: ${v2Errors} failed of ${v2Requests}, as sent`);
  t.equal(await cell(page, "v1", "errors"), "0", "v1: none failed");
  const rate = ((Math.round((v2Errors / v2Requests) * 10_000) / 10_000) * 100).toFixed(2);
  t.equal(await cell(page, "v2", "error_rate"), `${rate} %`, `v2 error rate ${rate} %`);
  t.equal(await cell(page, "v1", "error_rate"), "0.00 %");
  const p99 = /^([0-9.]+) ms$/.exec(await cell(page, "v2", "p99"));
  t.ok(p99 && Number(p99[1]) >= 25, `v2 p99 ${p99?.[1]} ms: v2 answers after 30 ms`);
  const rps = Number(await cell(page, "v2", "rps"));
  t.ok(rps > 0, `v2 at ${rps} req/s`);

  const shot = join(dir, "traffic-page.png");
  await page.screenshot({ path: shot, fullPage: true });
  const png = await readFile(shot);
  // To look at it: MESHPROXY_TRAFFIC_PAGE_PNG=/tmp/page.png npx tap test/e2e/traffic-page.test.ts
  const keep = process.env["MESHPROXY_TRAFFIC_PAGE_PNG"];
  if (keep) await writeFile(keep, png);
  t.ok(png.length > 1000, `a screenshot of ${png.length} bytes`);
  t.same([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "that is a PNG");

  // The control: v2 to 100 %, through a same-origin fetch the admin API accepts.
  await page.locator('[data-service="api"] input[data-subset="v1"]').fill("0");
  await page.locator('[data-service="api"] input[data-subset="v2"]').fill("100");
  await page.locator('[data-service="api"] [data-role="apply"]').click();
  await page.locator('[data-service="api"] [data-role="status"]', { hasText: "stored in the dev control plane" }).waitFor({ timeout: 10_000 });
  await waitForCell(page, "v2", "weight", "100.00 %");
  t.equal(await cell(page, "v1", "weight"), "0.00 %", "the page shows the new weights once the new Snapshot is applied");
  const after = await send(url, 20);
  t.equal(after.requests["v2"], 20, "and the traffic moved: all 20 new requests went to v2");
  await waitForCell(page, "v2", "requests", String(v2Requests + 20));
  t.pass("the page counts them on v2");
  t.same(problems, [], "no console error, CSP violation or failed request on the page");
});
