// The README's screenshots, taken only when asked, on the real default model so that answers are text and the
// playground is caught mid-stream:
//   SCREENSHOTS_DIR=$PWD/docs/screenshots E2E_MODEL=$PWD/data/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//   E2E_ADAPTER_FIXTURES=$PWD/../shared/fixtures/smollm2/adapters scripts/e2e.sh screenshots.spec.ts
import { test, expect } from "@playwright/test";
import * as path from "path";

const dir = process.env.SCREENSHOTS_DIR;

test("screenshots of the gallery, the playground mid-stream and the history", async ({ page }) => {
  test.skip(!dir, "set SCREENSHOTS_DIR to take the README's screenshots");
  test.setTimeout(180_000);
  await page.setViewportSize({ width: 1200, height: 900 });
  await page.goto("/");
  await expect(page.locator("header.site-header")).toHaveAttribute("data-hydrated", "true");
  await page.screenshot({ path: path.join(dir!, "gallery.png") });

  await page.goto("/a/tldr_content_gen");
  await expect(page.locator("header.site-header")).toHaveAttribute("data-hydrated", "true");
  await page.getByRole("button", { name: "Example 1" }).click();
  await page.getByLabel("Max new tokens").fill("96");
  await page.getByRole("button", { name: "Run" }).click();
  await expect
    .poll(async () => (await page.locator('section.pane[data-pane="1"] .pane-text').textContent())!.length, {
      timeout: 120_000,
    })
    .toBeGreaterThan(40);
  await page.screenshot({ path: path.join(dir!, "playground.png"), fullPage: true });
  await expect(page.getByRole("button", { name: "Run" })).toBeEnabled({ timeout: 120_000 });

  await page.goto("/history");
  await expect(page.locator("#history li").first()).toBeVisible();
  await page.screenshot({ path: path.join(dir!, "history.png") });
});
