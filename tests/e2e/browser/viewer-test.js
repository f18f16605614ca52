// Drive the viewer page of `iipy serve` in headless Chromium, the way a user would,
// with the network cut off (lib.js): open it on sky.fits, change the colormap, then
// min/max, then open the cube and mix its channels; back on sky.fits, try every stretch
// and a range preset, move to a pixel, open the page's address in a second page (a
// shared link), read the values under the cursor there, download the view as FITS,
// and follow a link giving the centre as RA, Dec.  After each display step, record
// the tiles' pixels and a screenshot.
//
//   node viewer-test.js --url http://127.0.0.1:PORT/ --out DIR --chromium /usr/bin/chromium
//                       --profile EMPTY_DIR --pixel X,Y --radec RA,DEC
//
// Writes DIR/result.json (read by tests/e2e/test_browser.py), DIR/<step>.png and
// DIR/view.fits.
'use strict';

const path = require('path');
const { run, watch, tileSignatures } = require('./lib');

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

/** The state a shared link must restore. */
async function viewState(page) {
  return page.evaluate(() => {
    const v = window.iipyViewer;
    return {
      image: v.image, centre: v.centre(), query: v.layer._query, stretch: v.state.stretch,
      colormap: v.state.colormap, beta: v.state.beta,
      ranges: v.state.channels.map((ch) => [ch.min, ch.max]), hash: location.hash,
    };
  });
}

run(process.argv.slice(2), async (page, log, result, args, context) => {
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

  // ---- stretches (pixels are checked for the numeric GAM only) ----
  before = await loads(page);
  await page.selectOption('#image', 'sky.fits');
  await page.waitForFunction(() => window.iipyViewer.image === 'sky.fits');
  await waitForTiles(page, before);
  for (const name of ['linear', 'sqrt', 'log', 'asinh', 'equalise', 'power']) {
    before = await loads(page);
    await page.selectOption('#stretch', name);
    await waitForTiles(page, before);
    await record(page, result, args.out, 'stretch-' + name);
  }
  before = await loads(page);
  await setValue(page, '#gamma', '2');
  await waitForTiles(page, before);
  await record(page, result, args.out, 'stretch-power2');
  before = await loads(page);
  await page.selectOption('#stretch', 'asinh');
  await waitForTiles(page, before);
  before = await loads(page);
  await setValue(page, '#beta', '0.5');
  await waitForTiles(page, before);
  await record(page, result, args.out, 'stretch-asinh05');

  // ---- a range preset: the central 99.5 % of a reduced copy's values ----
  before = await loads(page);
  await page.selectOption('#range-preset', '99.5');
  await page.waitForFunction(() => window.iipyViewer.presetRanges);
  await waitForTiles(page, before);
  result.preset = await page.evaluate(() => ({
    ranges: window.iipyViewer.presetRanges, url: window.iipyViewer.samples.url,
    inputs: [document.getElementById('min-0').value, document.getElementById('max-0').value],
  }));
  await record(page, result, args.out, 'preset');

  // ---- a view worth sharing: colormap, a pixel in the middle, zoomed in ----
  const [px, py] = args.pixel.split(',').map(Number);
  before = await loads(page);
  await page.selectOption('#colormap', 'hot');
  await waitForTiles(page, before);
  before = await loads(page);
  await page.evaluate(([x, y]) => {
    const v = window.iipyViewer;
    v.map.setView(v.map.unproject([x - 0.5, v.meta.height + 0.5 - y], v.meta.levels - 1),
                  v.meta.levels);
  }, [px, py]);
  await waitForTiles(page, before);
  result.shared = { url: page.url(), first: await viewState(page) };

  // ---- the link opened in another page restores the view ----
  const second = watch(await context.newPage(), log);
  await second.goto(result.shared.url);
  await waitForTiles(second, 0);
  result.shared.second = await viewState(second);
  result.shared.secondTiles = await tileSignatures(second, TILES);
  result.shared.firstTiles = await tileSignatures(page, TILES);

  // ---- under the cursor: the pixel, its value and its world coordinates ----
  const box = await second.locator('#map').boundingBox();
  const point = await second.evaluate(([x, y]) => window.iipyViewer.containerPointOf(x, y),
                                      [px, py]);
  await second.mouse.move(box.x + point.x, box.y + point.y);
  await second.waitForFunction(([x, y]) => {
    const r = window.iipyViewer.readout;
    return r && r.x === x && r.y === y;
  }, [px, py]);
  result.readout = await second.evaluate(() => ({
    values: window.iipyViewer.readout,
    text: ['pixel', 'value', 'lon', 'lat', 'lon-name', 'lat-name', 'system'].map(
      (id) => document.getElementById('readout-' + id).textContent),
  }));

  // ---- download the view as FITS ----
  const [download] = await Promise.all([second.waitForEvent('download'),
                                        second.click('#download')]);
  await download.saveAs(path.join(args.out, 'view.fits'));
  result.download = { name: download.suggestedFilename(), url: download.url() };

  // ---- a link with the centre in RA, Dec (the address edited in place) ----
  const [ra, dec] = args.radec.split(',');
  before = await loads(second);
  await second.evaluate(([r, d]) => {
    location.hash = '#fif=sky.fits&ra=' + r + '&dec=' + d + '&zoom=2&stretch=log';
  }, [ra, dec]);
  await second.waitForFunction(() => window.iipyViewer.state.stretch === 'log');
  await waitForTiles(second, before);
  result.radec = await viewState(second);
  await second.close();
});
