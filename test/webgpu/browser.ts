/**
 * Debian's Chromium, driven by playwright-core, with WebGPU on (SwiftShader on a machine without a
 * GPU), a fresh temporary profile, and no way to reach anything but the suite's own server.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type BrowserContext, type Page } from "playwright-core";

export const CHROMIUM = process.env["PRUNEC_CHROMIUM"] ?? "/usr/bin/chromium";

/**
 * `--enable-unsafe-webgpu` is the only WebGPU flag needed: on a machine without a usable GPU,
 * Chromium then hands out its SwiftShader (CPU Vulkan) adapter, isFallbackAdapter = true.
 * `--enable-features=Vulkan`, `--use-angle=swiftshader` and `--use-webgpu-adapter=swiftshader`
 * were tried and change nothing here (same adapter), so they are left out.
 */
export const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--no-first-run",
] as const;

export interface AdapterInfo {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  isFallbackAdapter: boolean;
}

export interface BrowserSession {
  page: Page;
  userAgent: string;
  /** Every console message of the page, as "[type] text", in arrival order. */
  console: string[];
  /** Uncaught page errors. */
  pageErrors: string[];
  /** Requests to anything but the suite's server (aborted). */
  blocked: string[];
  close(): Promise<void>;
}

/** Launch Chromium, open `origin` (the suite's server) and wait for the page's API (`window[api]`). */
export async function openBrowser(origin: string, api = "prunecWebgpu"): Promise<BrowserSession> {
  const profile = mkdtempSync(join(tmpdir(), "prunec-webgpu-"));
  let context: BrowserContext | undefined;
  const close = async () => {
    try {
      await context?.close();
    } finally {
      rmSync(profile, { recursive: true, force: true });
    }
  };
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: false, // `--headless=new` is passed explicitly instead
      args: [...CHROMIUM_ARGS],
      timeout: 60_000,
    });
    const consoleLines: string[] = [];
    const pageErrors: string[] = [];
    const blocked: string[] = [];
    await context.route("**/*", (route) => {
      const url = route.request().url();
      if (url.startsWith(origin)) return route.continue();
      blocked.push(url);
      return route.abort("blockedbyclient");
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("console", (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
    page.on("pageerror", (e) => pageErrors.push(e.message));
    const failed = new Promise<never>((_, reject) =>
      page.once("pageerror", (e) => reject(new Error(`page error: ${e.message}`))),
    );
    failed.catch(() => undefined); // may reject after the race is over
    await page.goto(origin);
    await Promise.race([page.waitForFunction((name) => name in window, api, { timeout: 60_000 }), failed]);
    const userAgent = await page.evaluate(() => navigator.userAgent);
    return { page, userAgent, console: consoleLines, pageErrors, blocked, close };
  } catch (err) {
    await close();
    throw err;
  }
}
