import { test, expect, Page } from "@playwright/test";

// Effects never run during server rendering: the header's data-hydrated flips to "true" only in the browser.
async function waitForHydration(page: Page) {
  await expect(page.locator("header.site-header")).toHaveAttribute("data-hydrated", "true");
}

test("home page is rendered on the server", async ({ request }) => {
  const res = await request.get("/");
  expect(res.status()).toBe(200);
  const html = await res.text();
  expect(html).toContain("<h1>LoRA Land</h1>");
  expect(html).toContain('id="model-name"');
  expect(html).toContain("/pkg/loraland.js");
});

test("the WASM bundle and stylesheet are served", async ({ request }) => {
  const wasm = await request.get("/pkg/loraland.wasm");
  expect(wasm.status()).toBe(200);
  expect(wasm.headers()["content-type"]).toContain("application/wasm");
  const css = await request.get("/pkg/loraland.css");
  expect(css.status()).toBe(200);
});

test("the page hydrates and shows the server's facts from SQLite", async ({ page }) => {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto("/");
  await waitForHydration(page);
  await expect(page.locator("#model-name")).toHaveText("base");
  await expect(page.locator("#server-info dd").nth(1)).toHaveText(/^\d+$/);
  expect(errors).toEqual([]);
});

test("unknown paths answer 404 with a page", async ({ request }) => {
  const res = await request.get("/no/such/page");
  expect(res.status()).toBe(404);
  expect(await res.text()).toContain("Page not found");
});
