// Drive the viewer page of `iipy serve` in headless Chromium, the way a user would:
// open it on sky.fits, change the colormap, then min/max, then open the cube and mix
// its channels.  After each step, record the tiles' pixels and a screenshot.
//
//   node viewer-test.js --url http://127.0.0.1:PORT/ --out DIR --chromium /usr/bin/chromium
//                       --profile EMPTY_DIR
//
// Writes DIR/result.json (read by tests/e2e/test_browser.py) and DIR/<step>.png.
'use strict';

const path = require('path');
const { run, tileSignatures } = require('./lib');

const TILES = '#map .iipy-tile img';

/** Wait until the tile layer has fired one more 'load' than `before`. */
async function waitForTiles(page, before) {
  await page.waitForFunction((n) => window.iipyViewer && window.iipyViewer.loads > n, before);
  // Leaflet prunes the tiles of the previous draw right after 'load'.
  await page.waitForTimeout(150);
}

async function loads(page) {
  return page.evaluate(() => window.iipyViewer.loads);
}

async function record(page, result, out, name) {
  const step = {
    tiles: await tileSignatures(page, TILES),
    query: await page.evaluate(() => window.iipyViewer.layer._query),
    image: await page.evaluate(() => window.iipyViewer.image),
    status: await page.evaluate(() => document.getElementById('status').textContent),
    screenshot: path.join(out, name + '.png'),
  };
  await page.locator('#map').screenshot({ path: step.screenshot });
  result.steps[name] = step;
}

/** Type a value into an input and commit it (the viewer listens to 'change'). */
async function setValue(page, selector, value) {
  await page.fill(selector, String(value));
  await page.press(selector, 'Enter');
  await page.dispatchEvent(selector, 'change');
}

run(process.argv.slice(2), async (page, log, result, args) => {
  await page.goto(args.url + '#fif=sky.fits');
  await waitForTiles(page, 0);
  result.title = await page.title();
  result.images = await page.$$eval('#image option', (options) => options.map((o) => o.value));
  result.meta = await page.evaluate(() => window.iipyViewer.meta);
  await record(page, result, args.out, 'default');
  await page.screenshot({ path: path.join(args.out, 'page.png') });

  let before = await loads(page);
  await page.selectOption('#colormap', 'jet');
  await waitForTiles(page, before);
  await record(page, result, args.out, 'jet');

  const channel = result.meta.channels[0];
  const span = channel.max - channel.min;
  result.minmax = [channel.min + 0.02 * span, channel.min + 0.2 * span];
  before = await loads(page);
  await setValue(page, '#max-0', result.minmax[1]);
  await waitForTiles(page, before);
  before = await loads(page);
  await setValue(page, '#min-0', result.minmax[0]);
  await waitForTiles(page, before);
  await record(page, result, args.out, 'minmax');

  before = await loads(page);
  await page.fill('#gamma', '1');
  await page.dispatchEvent('#gamma', 'change');
  await waitForTiles(page, before);
  await record(page, result, args.out, 'gamma');

  // A cube: colour mix by default, then one channel, then a different mix.
  before = await loads(page);
  await page.selectOption('#image', 'cube.fits');
  await page.waitForFunction(() => window.iipyViewer.image === 'cube.fits');
  await waitForTiles(page, before);
  await record(page, result, args.out, 'cube-mix');
  await page.screenshot({ path: path.join(args.out, 'page-cube.png') });

  before = await loads(page);
  await page.selectOption('#mode', 'mono');
  await waitForTiles(page, before);
  await record(page, result, args.out, 'cube-mono');

  before = await loads(page);
  await page.check('#channel-2');
  await waitForTiles(page, before);
  await record(page, result, args.out, 'cube-channel3');

  before = await loads(page);
  await page.selectOption('#mode', 'colour');
  await waitForTiles(page, before);
  before = await loads(page);
  // Leave the first channel out of the mix (black).
  await page.$eval('#colour-0', (input) => {
    input.value = '#000000';
    input.dispatchEvent(new Event('change'));
  });
  await waitForTiles(page, before);
  await record(page, result, args.out, 'cube-mix2');
});
