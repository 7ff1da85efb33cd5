import { test, expect, Page } from "@playwright/test";

async function waitForHydration(page: Page) {
  await expect(page.locator("header.site-header")).toHaveAttribute("data-hydrated", "true");
}

test("gallery groups the 25 adapters and filters them as you type", async ({ page }) => {
  await page.goto("/");
  await waitForHydration(page);
  await expect(page.locator("li.card")).toHaveCount(25);
  await expect(page.locator("#shown-count")).toHaveText("25 of 25 adapters");
  await page.getByLabel("Filter").fill("sql");
  await expect(page.locator("#shown-count")).toHaveText("1 of 25 adapters");
  await expect(page.locator('li.card[data-task="wikisql"]')).toBeVisible();
  await expect(page.locator('li.card[data-task="glue_sst2"]')).toBeHidden();
  await page.getByLabel("Filter").fill("sentiment");
  await expect(page.locator('li.card[data-task="glue_sst2"]')).toBeVisible();
});

test("playground: example chip, prompt preview, Run streams both panes, then history and the shared link", async ({
  page,
  browser,
}) => {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto("/");
  await waitForHydration(page);
  await page.getByRole("link", { name: "Sentiment Detection (SST2)" }).click();
  await expect(page).toHaveURL(/\/a\/glue_sst2$/);
  await expect(page.getByRole("heading", { level: 1 })).toHaveText("Sentiment Detection (SST2)");

  await page.getByRole("button", { name: "Example 2" }).click();
  const input = page.getByLabel("sentence");
  await expect(input).toHaveValue("the plot is nothing but a string of tired clichés .");
  await expect(page.locator("#prompt-preview")).toContainText('"the plot is nothing but a string of tired clichés ."');
  await expect(page.locator("#prompt-preview")).toContainText("Respond with 0 if the sentiment");
  await expect(page.locator("#token-count")).toHaveText(/^\(\d+ tokens\)$/);

  await page.getByLabel("Max new tokens").fill("12");
  await page.getByRole("button", { name: "Run" }).click();
  const panes = page.locator("section.pane");
  await expect(panes).toHaveCount(2);
  for (const i of [0, 1]) {
    const pane = page.locator(`section.pane[data-pane="${i}"]`);
    await expect(pane).toHaveAttribute("data-status", "done");
    await expect(pane.locator(".pane-timings")).toHaveText(/^12 tokens · first token \d+ ms · [\d.–]+ tokens\/s$/);
  }
  const adapterText = await page.locator('section.pane[data-pane="0"] .pane-text').textContent();
  const link = page.locator("#run-link");
  const href = await link.getAttribute("href");
  expect(href).toMatch(/^\/r\/[0-9a-f-]{36}$/);

  await page.goto("/history");
  await expect(page.locator("#history li").first().locator("a")).toHaveAttribute("href", href!);

  // The shared link works in a fresh browser context (no session cookie).
  const other = await browser.newContext();
  const shared = await other.newPage();
  await shared.goto(href!);
  // A click before hydration is lost (the vote button is wired up by the WASM).
  await waitForHydration(shared);
  await expect(shared.getByRole("heading", { level: 1 })).toHaveText("Sentiment Detection (SST2)");
  await expect(shared.locator('section.pane[data-pane="0"] .pane-text')).toHaveText(adapterText!);
  await expect(shared.locator('section.pane[data-pane="1"]')).toHaveAttribute("data-status", "done");
  await expect(shared.locator(".inputs dd")).toHaveText("the plot is nothing but a string of tired clichés .");
  // A visitor votes; the vote shows on the gallery as the adapter's win rate.
  await shared.getByRole("button", { name: "Vote: Sentiment Detection (SST2) is better" }).click();
  await expect(shared.locator("#vote-status")).toHaveText("Thanks! Your vote: Sentiment Detection (SST2).");
  await shared.goto("/");
  await expect(shared.locator('li.card[data-task="glue_sst2"] .card-votes')).toHaveText("Won 1 of 1 votes (100%)");
  // Its history is empty: runs belong to the session that made them.
  await shared.goto("/history");
  await expect(shared.locator("#no-runs")).toBeVisible();
  await other.close();
  expect(errors).toEqual([]);
});

test("an adapter that is not installed shows its error in the pane; the base pane still answers", async ({ page }) => {
  await page.goto("/a/wikisql");
  await waitForHydration(page);
  await page.getByLabel("Max new tokens").fill("4");
  await page.getByRole("button", { name: "Run" }).click();
  const adapterPane = page.locator('section.pane[data-pane="0"]');
  await expect(adapterPane).toHaveAttribute("data-status", "error");
  await expect(adapterPane.getByRole("alert")).toContainText("`wikisql` is not installed");
  await expect(page.locator('section.pane[data-pane="1"]')).toHaveAttribute("data-status", "done");
});

test("a prompt with markup is shown as text and runs no script", async ({ page }) => {
  let dialogs = 0;
  page.on("dialog", async (d) => {
    dialogs += 1;
    await d.dismiss();
  });
  await page.goto("/a/glue_sst2");
  await waitForHydration(page);
  const evil = `<script>alert(1)</script><img src=x onerror="alert(2)">`;
  await page.getByLabel("sentence").fill(evil);
  await expect(page.locator("#prompt-preview")).toContainText(evil);
  await page.getByLabel("Max new tokens").fill("3");
  await page.getByRole("button", { name: "Run" }).click();
  await expect(page.locator('section.pane[data-pane="1"]')).toHaveAttribute("data-status", "done");
  const href = await page.locator("#run-link").getAttribute("href");
  await page.goto(href!);
  await expect(page.locator(".inputs dd")).toHaveText(evil);
  expect(await page.locator("img[src=x]").count()).toBe(0);
  expect(dialogs).toBe(0);
});

test("compare runs one prompt through three adapters at once", async ({ page }) => {
  await page.goto("/compare?task=glue_sst2&p1=glue_sst2&p2=customer_support&p3=gsm8k");
  await waitForHydration(page);
  await expect(page.locator("section.pane")).toHaveCount(3);
  await page.getByLabel("Max new tokens").fill("6");
  await page.getByRole("button", { name: "Run" }).click();
  for (const i of [0, 1, 2]) {
    await expect(page.locator(`section.pane[data-pane="${i}"]`)).toHaveAttribute("data-status", "done");
  }
  const texts = await page.locator("section.pane .pane-text").allTextContents();
  expect(texts.length).toBe(3);
});

test("without JavaScript a plain form submit runs the comparison and shows the finished answers", async ({ browser }) => {
  const context = await browser.newContext({ javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto("/a/glue_sst2");
  await expect(page.getByLabel("sentence")).toHaveValue("a gorgeous, witty, seductive movie .");
  await page.getByLabel("sentence").fill("a plain form, no scripts .");
  await page.getByLabel("Max new tokens").fill("5");
  await page.getByRole("button", { name: "Run" }).click();
  await expect(page).toHaveURL(/\/r\/[0-9a-f-]{36}$/);
  await expect(page.locator(".inputs dd")).toHaveText("a plain form, no scripts .");
  for (const i of [0, 1]) {
    const pane = page.locator(`section.pane[data-pane="${i}"]`);
    await expect(pane).toHaveAttribute("data-status", "done");
    await expect(pane.locator(".pane-timings")).toHaveText(/^5 tokens · first token \d+ ms/);
  }
  await context.close();
});

test("playground: the constrain switch holds the base model to the task's labels beside the adapter", async ({ page }) => {
  await page.goto("/a/glue_sst2");
  await waitForHydration(page);
  const constrain = page.getByLabel(/Constrain the base model to the task's output format: 0 \/ 1/);
  await expect(constrain).not.toBeChecked();
  await constrain.check();
  await page.getByLabel("Max new tokens").fill("8");
  await page.getByRole("button", { name: "Run" }).click();
  for (const i of [0, 1]) {
    await expect(page.locator(`section.pane[data-pane="${i}"]`)).toHaveAttribute("data-status", "done");
  }
  // Pane 1 is the base model: exactly one of the task's labels, ended as soon as it is complete.
  await expect(page.locator('section.pane[data-pane="1"] .pane-text')).toHaveText(/^[01]$/);
  await expect(page.locator('section.pane[data-pane="1"] .pane-timings')).toHaveText(/^1 tokens? · /);
  // A task whose answer is free text has no switch.
  await page.goto("/a/legal");
  await waitForHydration(page);
  await expect(page.getByLabel(/Constrain the base model/)).toHaveCount(0);
});
