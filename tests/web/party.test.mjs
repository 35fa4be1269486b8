// The listening-party page in Chromium: two pages against the standalone binary. A creates
// a party, B joins by its code; they chat and each sees the other typing; A plays and
// seeks and B's player follows within 100 ms (read through the page). Screenshots of both
// pages go to target/web-party-{a,b}.png.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { root, startJam } from "../support/jam.mjs";

const CHROMIUM = process.env.JAM_CHROMIUM ?? "/usr/bin/chromium";
let jam;
let base;
let browser;

before(async () => {
  // No JAM_JWT_SECRET: the page signs in with development tokens, as a newcomer's would.
  jam = await startJam({ JAM_JWT_SECRET: null });
  base = jam.base;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
  });
});

after(async () => {
  await browser?.close();
  jam?.proc.kill();
});

async function signIn(name) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e));
  await page.goto(base);
  await page.fill("#name", name);
  await page.click("#signin-btn");
  await page.waitForSelector("#lobby:not([hidden])");
  return page;
}

/** B's position minus A's, both read on this machine's clock at the same instant. */
async function drift(a, b) {
  const read = (p) => p.evaluate(() => ({ pos: window.jamPlayer.getPosition(), at: performance.timeOrigin + performance.now() }));
  const ra = await read(a);
  const rb = await read(b);
  return rb.pos - (ra.pos + (rb.at - ra.at));
}

test("two pages: create, join by code, chat, typing, and playback that follows", async () => {
  const a = await signIn("Ann");
  const b = await signIn("Ben");
  await a.fill("#session-name", "Friday mix");
  await a.click("#create-btn");
  await a.waitForSelector("#party:not([hidden])");
  const code = (await a.textContent("#party-code")).trim();
  assert.match(code, /^[A-Z0-9]{4,12}$/);
  await b.fill("#code", code);
  await b.click("#join-btn");
  await b.waitForSelector("#party:not([hidden])");
  await a.waitForSelector('#people li:has-text("Ben")');

  // Typing and chat, both ways.
  await a.type("#chat-input", "hel");
  await b.waitForSelector('#typing:has-text("Ann typing")');
  await a.fill("#chat-input", "hello Ben");
  await a.press("#chat-input", "Enter");
  await b.waitForSelector('#messages :text("hello Ben")');
  await b.type("#chat-input", "h");
  await a.waitForSelector('#typing:has-text("Ben typing")');
  await b.fill("#chat-input", "hi Ann");
  await b.press("#chat-input", "Enter");
  await a.waitForSelector('#messages :text("hi Ann")');

  // The host queues a tone and plays it; B follows.
  await a.click('#add-tracks button:has-text("Concert A")');
  await b.waitForSelector('#queue li:has-text("Concert A")');
  await a.click("#play-btn");
  await b.waitForFunction(() => window.jamPlayer.isPlaying() && window.jamPlayer.uri === "tone:440");
  await new Promise((r) => setTimeout(r, 1500));
  const d1 = await drift(a, b);
  assert.ok(Math.abs(d1) < 100, `after play: drift ${d1} ms`);

  // A seeks ahead; B jumps with it.
  await a.click("#seek-btn");
  await b.waitForFunction(() => window.jamPlayer.getPosition() > 10_000);
  await new Promise((r) => setTimeout(r, 1500));
  const d2 = await drift(a, b);
  assert.ok(Math.abs(d2) < 100, `after seek: drift ${d2} ms`);
  await b.waitForFunction(() => document.getElementById("drift").textContent.includes("ms"));

  mkdirSync(join(root, "target"), { recursive: true });
  await a.screenshot({ path: join(root, "target", "web-party-a.png") });
  await b.screenshot({ path: join(root, "target", "web-party-b.png") });
  console.log(`drift after play ${d1.toFixed(1)} ms, after seek ${d2.toFixed(1)} ms`);
});
