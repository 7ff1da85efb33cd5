// Playwright drives Debian's Chromium (/usr/bin/chromium; `npx playwright install` cannot work offline) against a
// `loraland` server that this config starts on a free port with a fresh database and stops afterwards: the release
// build that `make serve` runs (`make site`). scripts/e2e.sh chooses the port and the temporary folder.
import { defineConfig } from "@playwright/test";
import * as path from "path";

const root = path.resolve(__dirname, "..");
const port = process.env.E2E_PORT ?? "3000";
const dataDir = process.env.E2E_DATA_DIR ?? path.join(root, "target", "e2e-data");
const model = process.env.E2E_MODEL ?? path.resolve(root, "..", "shared", "fixtures", "tiny-llama", "base");
const adapters = process.env.E2E_ADAPTERS_DIR ?? path.join(dataDir, "adapters");
const bin = process.env.E2E_BIN ?? path.join(root, "target", "release", "loraland");

export default defineConfig({
  testDir: "./tests",
  timeout: 60_000,
  expect: { timeout: 15_000 },
  fullyParallel: false,
  workers: 1,
  // One retry in CI, so that a failure's trace is kept with a second attempt beside it; but a test that passes
  // only on its retry fails the run: a green CI must not hide a hang.
  retries: process.env.CI ? 1 : 0,
  failOnFlakyTests: !!process.env.CI,
  reporter: [["list"]],
  use: {
    baseURL: `http://127.0.0.1:${port}`,
    trace: "retain-on-failure",
    launchOptions: {
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    },
  },
  webServer: {
    command: `${bin} serve --addr 127.0.0.1:${port} --data-dir ${dataDir} --model ${model} --adapters-dir ${adapters} --inject-train-step-delay-ms 60`,
    url: `http://127.0.0.1:${port}/`,
    timeout: 120_000,
    reuseExistingServer: false,
    stdout: "pipe",
    stderr: "pipe",
    env: { LEPTOS_SITE_ROOT: path.join(root, "target", "site"), RUST_LOG: process.env.E2E_RUST_LOG ?? "server=info,app=info,engine=info,tower_http=warn" },
  },
});
