import { test, expect, Page } from "@playwright/test";

async function waitForHydration(page: Page) {
  await expect(page.locator("header.site-header")).toHaveAttribute("data-hydrated", "true");
}

// Twenty sentiment examples: the last four are held out and scored.
const examples = Array.from({ length: 20 }, (_, i) => {
  const [text, label] = i % 2 === 0 ? ["a warm, funny film", "1"] : ["a dull, tired film", "0"];
  return JSON.stringify({ prompt: `Review ${i}: ${text}. Sentiment:`, completion: ` ${label}` });
}).join("\n");

test("train: upload a JSONL, watch the loss curve grow, then compare the new adapter with the base", async ({ page }) => {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto("/train");
  await waitForHydration(page);

  // A bad file is refused with its line named, back on the form.
  await page.locator("#source-upload").check();
  await page.locator("#train-file").setInputFiles({
    name: "bad.jsonl",
    mimeType: "application/json",
    buffer: Buffer.from(examples + "\n{oops"),
  });
  await page.getByRole("button", { name: "Train" }).click();
  await expect(page.locator("#train-error")).toContainText("line 21: not a JSON object");

  await page.locator("#train-name").fill("e2e sentiment");
  await page.locator("#train-task").selectOption("glue_sst2");
  await page.locator("#source-upload").check();
  await page.locator("#train-file").setInputFiles({
    name: "reviews.jsonl",
    mimeType: "application/json",
    buffer: Buffer.from(examples),
  });
  await page.locator("#steps").fill("40");
  await page.locator("#batch").fill("4");
  await page.getByRole("button", { name: "Train" }).click();

  await expect(page).toHaveURL(/\/train\/[0-9a-f]{12}$/);
  const id = page.url().split("/").pop()!;
  await waitForHydration(page);
  await expect(page.getByRole("heading", { level: 1 })).toHaveText("e2e sentiment");
  await expect(page.locator("#adapter-id")).toHaveText(`trained/${id}`);

  // The chart grows while the job runs (events from the server, not a reload).
  const chart = page.locator(".loss-chart svg");
  const points = async () => Number(await chart.getAttribute("data-points"));
  await expect.poll(points, { timeout: 20_000 }).toBeGreaterThan(0);
  const seen = await points();
  await expect.poll(points, { timeout: 20_000 }).toBeGreaterThan(seen);
  await expect(page.locator("#job")).toHaveAttribute("data-status", "done", { timeout: 30_000 });
  expect(await points()).toBe(40);
  await expect(page.locator("#job-examples")).toHaveText("16 training examples, 4 held out.");
  await expect(page.locator("#job-score caption")).toHaveText("Held-out score (accuracy, 4 examples)");
  await expect(page.locator("#score-adapter")).toHaveText(/^\d+\.\d$/);
  await expect(page.locator("#job-progress")).toContainText("Step 40 of 40");
  await expect(page.locator("#download-link")).toHaveAttribute("href", `/train/${id}/adapter.zip`);

  // The compare page runs it beside the base model.
  await page.getByRole("link", { name: "Compare with the base model" }).click();
  await expect(page).toHaveURL(new RegExp(`/compare\\?task=glue_sst2&p1=trained/${id}&p2=base$`));
  await waitForHydration(page);
  await expect(page.locator("section.pane")).toHaveCount(2);
  await expect(page.locator('section.pane[data-pane="0"]')).toContainText(`trained/${id}`);
  await page.getByLabel("Max new tokens").fill("4");
  await page.getByRole("button", { name: "Run" }).click();
  for (const i of [0, 1]) {
    await expect(page.locator(`section.pane[data-pane="${i}"]`)).toHaveAttribute("data-status", "done");
  }

  // The gallery shows it as this visitor's own.
  await page.goto("/");
  const card = page.locator(`#trained-gallery li.card[data-adapter="trained/${id}"]`);
  await expect(card).toContainText("e2e sentiment");
  await expect(card).toContainText("yours");
  await expect(card).toContainText("accuracy: base");
  expect(errors).toEqual([]);
});
