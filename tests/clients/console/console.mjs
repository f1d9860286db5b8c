// Drives Weir's web console in a real browser (Debian's chromium through playwright-core),
// against a running `weir serve`. Run by crates/weir/tests/console.rs, which starts the
// gateway and the psql clients first and checks their side afterwards.
//
// Environment:
//   WEIR_URL         the console, http://127.0.0.1:PORT
//   WEIR_TOKEN       an operator's token (approver and admin)
//   WEIR_WAITING     the identity whose statement waits for approval
//   WEIR_END         the identity whose session is ended from the console
//   WEIR_KEEP        the identity whose session a cross-site POST must not end
//   WEIR_TARGET      the target to simulate on
//   WEIR_ACCESS      an access request's id (weir request), approved here, then revoked
//   WEIR_SCREENSHOTS a directory for a screenshot of each page (optional)
//   CHROMIUM         the browser (default /usr/bin/chromium)
//
// Prints one JSON line per step: {"step": "...", ...}; exits 1 at the first failure.
import { chromium } from "playwright-core";
import http from "node:http";

const env = (k, d) => process.env[k] ?? d;
const url = env("WEIR_URL");
const shots = env("WEIR_SCREENSHOTS", "");
const report = (step, extra = {}) => console.log(JSON.stringify({ step, ...extra }));

async function shot(page, name) {
  if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

// Another site: a page whose form posts to the console (a CSRF attempt).
function evilSite(action) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><form id=f method=POST action="${action}" enctype="text/plain">
<input name='{"reason":"x","a' value='"}'></form><script>document.getElementById("f").submit()</script>`);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  // Script errors, and failed API calls once signed in (before, /console/me and the wrong
  // token's sign-in are meant to fail).
  let signedIn = false;
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("response", (r) => { if (signedIn && r.status() >= 400) errors.push(r.status() + " " + r.url()); });

  // 1. The console asks for a sign-in before it shows anything.
  await page.goto(url + "/");
  await page.locator("#page-signin").waitFor({ state: "visible" });
  const navHidden = await page.locator("#nav").isHidden();
  if (!navHidden) throw new Error("the console showed its pages before sign-in");
  await shot(page, "signin");
  await page.fill("#signin-token", "not-a-token");
  await page.click("#signin-form button[type=submit]");
  await page.locator("#signin-error").filter({ hasText: "not valid" }).waitFor();
  await page.fill("#signin-token", env("WEIR_TOKEN"));
  await page.click("#signin-form button[type=submit]");
  await page.locator("#whoami").filter({ hasText: "(" }).waitFor();
  signedIn = true;
  const cookies = await context.cookies();
  const c = cookies.find((k) => k.name === "weir_console");
  if (!c || !c.httpOnly || c.sameSite !== "Strict") throw new Error("cookie: " + JSON.stringify(c));
  const tokenInUrl = page.url().includes(env("WEIR_TOKEN"));
  if (tokenInUrl) throw new Error("the token is in the URL");
  report("signed_in", { who: await page.locator("#whoami").textContent() });

  // 2. A statement waiting for approval appears without a reload.
  await page.goto(url + "/#approvals");
  const card = page.locator("#approvals-list article").filter({ hasText: env("WEIR_WAITING") });
  await card.first().waitFor({ timeout: 20000 });
  const id = await card.first().getAttribute("data-id");
  await page.locator("#pending-count").filter({ hasText: /\d/ }).waitFor();
  await shot(page, "approvals");
  report("waiting_seen", { id });

  // 3. Approve it (with a reason): the card goes away.
  await card.first().locator("input.reason").fill("looks fine");
  await card.first().locator("button.approve").click();
  await page.locator("#flash").filter({ hasText: "approved" }).waitFor();
  await card.first().waitFor({ state: "detached", timeout: 10000 });
  report("approved", { id });

  // 3b. An access request is in the same inbox; approved, it becomes a grant.
  const access = page.locator(`#approvals-list article[data-id="${env("WEIR_ACCESS")}"]`);
  await access.waitFor({ timeout: 20000 });
  const accessTitle = await access.locator("h2").textContent();
  if (!accessTitle.startsWith("Access request")) throw new Error("access card: " + accessTitle);
  await access.locator("button.approve").click();
  await access.waitFor({ state: "detached", timeout: 10000 });
  report("access_approved", { id: env("WEIR_ACCESS") });

  // 4. Live sessions: a cross-site POST does not end one; the End button does.
  await page.goto(url + "/#sessions");
  const keepRow = page.locator("#sessions-table tbody tr").filter({ hasText: env("WEIR_KEEP") });
  await keepRow.first().waitFor({ timeout: 20000 });
  const keepSession = await keepRow.first().getAttribute("data-session");
  const evil = await evilSite(`${url}/v1/sessions/${keepSession}/end`);
  const evilPage = await context.newPage();
  const refused = evilPage.waitForResponse((r) => r.url().endsWith(`/v1/sessions/${keepSession}/end`));
  await evilPage.goto(`http://localhost:${evil.address().port}/`);
  const status = (await refused).status();
  await evilPage.close();
  evil.close();
  if (status < 400) throw new Error(`the cross-site POST got ${status}`);
  await page.waitForTimeout(500);
  await page.reload();
  await keepRow.first().waitFor({ timeout: 10000 });
  report("cross_site_refused", { status, session: keepSession });

  const endRow = page.locator("#sessions-table tbody tr").filter({ hasText: env("WEIR_END") });
  await endRow.first().waitFor({ timeout: 20000 });
  const endSession = await endRow.first().getAttribute("data-session");
  await shot(page, "sessions");
  await endRow.first().locator("button.end").click();
  await page.locator("#flash").filter({ hasText: `session ${endSession} ended` }).waitFor();
  await page.locator(`#sessions-table tbody tr[data-session="${endSession}"]`).waitFor({ state: "detached", timeout: 10000 });
  report("session_ended", { session: endSession });

  // 5. Search the trail, replay a session, verify the chain.
  await page.goto(url + "/#audit");
  await page.fill("#audit-form input[name=identity]", env("WEIR_WAITING"));
  await page.selectOption("#audit-form select[name=event]", "statement");
  await page.click("#audit-form button[type=submit]");
  const found = page.locator("#audit-table tbody tr").filter({ hasText: "DELETE" });
  await found.first().waitFor();
  const rows = await page.locator("#audit-table tbody tr").count();
  await found.first().locator("td:nth-child(4) a").click();
  await page.locator("#flash").filter({ hasText: "events, in order" }).waitFor();
  const replayed = await page.locator("#audit-table tbody tr").count();
  await page.click("#audit-verify");
  await page.locator("#audit-verdict").filter({ hasText: /^ok \d+ events/ }).waitFor({ timeout: 20000 });
  const verdict = await page.locator("#audit-verdict").textContent();
  await shot(page, "audit");
  report("audit", { rows, replayed, verdict });

  // 5b. Undo the approved DELETE from its before-image (in the replayed session's rows).
  const undoable = page.locator("#audit-table tbody tr").filter({ hasText: "DELETE" }).filter({ has: page.locator("a.undo-link") });
  await undoable.first().waitFor({ timeout: 10000 });
  await undoable.first().locator("a.undo-link").click();
  await page.locator("#undo-panel").waitFor();
  const undoSql = await page.locator("#undo-sql").textContent();
  if (!undoSql.includes("INSERT INTO")) throw new Error("the undo preview has no INSERT: " + undoSql);
  await page.click("#undo-apply");
  await page.locator("#undo-result").filter({ hasText: /restored|waiting/ }).waitFor({ timeout: 20000 });
  const undoResult = await page.locator("#undo-result").textContent();
  await shot(page, "undo");
  report("undone", { sql: undoSql, result: undoResult });

  // 6. The policy simulator.
  await page.goto(url + "/#simulate");
  await page.fill("#simulate-form input[name=identity]", env("WEIR_WAITING"));
  await page.selectOption("#simulate-target", env("WEIR_TARGET"));
  await page.fill("#simulate-form textarea[name=sql]", "SELECT 1; DELETE FROM items WHERE id = 2");
  await page.click("#simulate-form button[type=submit]");
  await page.locator("#simulate-table tbody tr").nth(1).waitFor();
  const decisions = await page.locator("#simulate-table tbody tr td:nth-child(3)").allTextContents();
  const rules = await page.locator("#simulate-table tbody tr td:nth-child(4)").allTextContents();
  await shot(page, "simulate");
  report("simulated", { decisions, rules });

  // 7. Grants: the access approved above is in force; revoke it.
  await page.goto(url + "/#grants");
  const grant = page.locator("#grants-table tbody tr").filter({ hasText: env("WEIR_KEEP") });
  await grant.first().waitFor({ timeout: 20000 });
  await shot(page, "grants");
  const grantId = await grant.first().locator("td:first-child").textContent();
  await grant.first().locator("button.revoke").click();
  await page.locator("#flash").filter({ hasText: `grant ${grantId} revoked` }).waitFor();
  await grant.first().waitFor({ state: "detached", timeout: 10000 });
  report("grant_revoked", { id: grantId });

  if (errors.length) throw new Error("console errors: " + errors.join(" | "));
  report("done");
} catch (e) {
  failed = true;
  report("failed", { error: String(e && e.stack || e) });
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
