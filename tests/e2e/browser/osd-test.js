// Open osd.html in headless Chromium once per case, each case a protocol and a source
// URL; at three zoom levels wait until every tile of the view is loaded, then take a
// screenshot of the viewer.
//
//   node osd-test.js --url http://127.0.0.1:PORT/osd.html --out DIR --chromium /usr/bin/chromium
//                    --profile EMPTY_DIR --cases '[["name", "proto", "source URL"], ...]'
//
// Writes DIR/result.json (read by tests/e2e/test_browser.py) and DIR/<name>-<zoom>.png.
'use strict';

const path = require('path');
const { run } = require('./lib');

/** Zooms relative to the home view (the whole image in the viewer). */
const ZOOMS = [0.1, 0.5, 2.5];

async function settle(page) {
  await page.waitForFunction(() => {
    const item = window.osd.viewer.world.getItemAt(0);
    return item && item.getFullyLoaded() && !window.osd.viewer.world.needsDraw();
  });
  await page.waitForTimeout(100);
}

run(process.argv.slice(2), async (page, log, result, args) => {
  for (const [name, proto, source] of JSON.parse(args.cases)) {
    const first = log.responses.length;
    const url = args.url + '?proto=' + proto + '&source=' + encodeURIComponent(source);
    await page.goto(url);
    await page.waitForFunction(() => window.osd && (window.osd.opened || window.osd.failed));
    const failed = await page.evaluate(() => window.osd.failed);
    if (failed) {
      throw new Error(name + ': ' + failed);
    }
    const steps = [];
    for (const zoom of ZOOMS) {
      await page.evaluate((z) => {
        const viewport = window.osd.viewer.viewport;
        viewport.zoomTo(viewport.getHomeZoom() * z, null, true);
        viewport.applyConstraints(true);
      }, zoom);
      await settle(page);
      const screenshot = path.join(args.out, name + '-' + zoom + '.png');
      await page.locator('#viewer').screenshot({ path: screenshot });
      steps.push({ zoom: zoom, screenshot: screenshot });
    }
    await page.waitForLoadState('networkidle');
    result.steps[name] = { url: url, steps: steps, responses: log.responses.slice(first) };
  }
});
