// Shared helpers of the browser drivers: start headless Chromium through playwright-core,
// record every response, console error and page error, and measure tile pixels.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

/** The flags the tests run Chromium with (the user data directory is given separately). */
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Start Chromium with an empty user data directory and open one page.
 * Returns {context, page, log}; log.responses = [{url, status}], log.failed =
 * [{url, error}], log.console = [text of console errors], log.pageErrors = [messages],
 * log.blocked = [URLs of requests to anything but options.allowOrigin: the network is
 * cut off, every such request is aborted].  Pages opened later with watch(page) are
 * logged too.
 */
async function openBrowser(options) {
  const context = await chromium.launchPersistentContext(options.userDataDir, {
    executablePath: options.executablePath,
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1200, height: 800 },
    acceptDownloads: true,
    timeout: 30000,
  });
  const log = { responses: [], failed: [], console: [], pageErrors: [], blocked: [] };
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url === options.allowOrigin || url.startsWith(options.allowOrigin + '/')) {
      return route.continue();
    }
    log.blocked.push(url);
    return route.abort('internetdisconnected');
  });
  const page = context.pages()[0] || (await context.newPage());
  watch(page, log);
  return { context, page, log };
}

/** Record a page's responses, failed requests, console errors and page errors in log. */
function watch(page, log) {
  page.on('response', (response) => {
    log.responses.push({ url: response.url(), status: response.status() });
  });
  page.on('requestfailed', (request) => {
    const failure = request.failure();
    log.failed.push({ url: request.url(), error: failure ? failure.errorText : '' });
  });
  page.on('console', (message) => {
    if (message.type() === 'error') {
      log.console.push(message.text());
    }
  });
  page.on('pageerror', (error) => {
    log.pageErrors.push(String(error && error.stack ? error.stack : error));
  });
  page.setDefaultTimeout(30000);
  return page;
}

/**
 * Mean R, G, B (0-255) of every loaded tile image in the page matching `selector`,
 * keyed by the tile's JTL argument ("z,n"), plus how far from grey each tile is
 * (largest |R-G|, |G-B| of its pixel means) and its natural size.
 */
async function tileSignatures(page, selector) {
  return page.evaluate((sel) => {
    const result = {};
    for (const img of document.querySelectorAll(sel)) {
      if (!img.complete || !img.naturalWidth) {
        continue;
      }
      const match = /[?&]JTL=([^&]+)/.exec(img.src);
      if (!match) {
        continue;
      }
      const canvas = document.createElement('canvas');
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const ctx = canvas.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      let r = 0, g = 0, b = 0, chroma = 0;
      const n = data.length / 4;
      for (let i = 0; i < data.length; i += 4) {
        r += data[i];
        g += data[i + 1];
        b += data[i + 2];
        chroma += Math.abs(data[i] - data[i + 1]) + Math.abs(data[i + 1] - data[i + 2]);
      }
      result[decodeURIComponent(match[1])] = {
        r: r / n, g: g / n, b: b / n, chroma: chroma / n,
        width: img.naturalWidth, height: img.naturalHeight, src: img.src,
      };
    }
    return result;
  }, selector);
}

/** Write the driver's JSON result where the test reads it. */
function writeResult(outDir, result) {
  fs.writeFileSync(path.join(outDir, 'result.json'), JSON.stringify(result, null, 1));
}

/** Parse `--name value` arguments into an object (url, out, chromium, profile required). */
function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--')) {
      throw new Error('unexpected argument ' + argv[i]);
    }
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const name of ['url', 'out', 'chromium', 'profile']) {
    if (!args[name]) {
      throw new Error('missing --' + name);
    }
  }
  return args;
}

/** Run `body(page, log, result, args, context)` in a fresh browser whose network is cut off
 * but for the origin of --url; always close it and write the result. */
async function run(argv, body) {
  const args = parseArgs(argv);
  const result = { ok: false, steps: {}, log: null, error: null };
  let browser = null;
  try {
    browser = await openBrowser({ executablePath: args.chromium, userDataDir: args.profile,
                                  allowOrigin: new URL(args.url).origin });
    result.log = browser.log;
    await body(browser.page, browser.log, result, args, browser.context);
    result.ok = true;
  } catch (error) {
    result.error = String(error && error.stack ? error.stack : error);
  } finally {
    if (browser) {
      await browser.context.close().catch(() => {});
    }
    writeResult(args.out, result);
  }
  process.exitCode = result.ok ? 0 : 1;
}

module.exports = { CHROMIUM_FLAGS, openBrowser, watch, tileSignatures, run };
