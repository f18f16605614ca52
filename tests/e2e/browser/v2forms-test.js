// Load v2forms.html (IIP requests in VisiOmatic 2's exact forms) in headless Chromium
// with several display settings and record, for each: the requests and their statuses,
// the parsed metadata and header values, the profile, and the tiles' pixels.
//
//   node v2forms-test.js --url http://127.0.0.1:PORT/v2forms.html --out DIR
//                        --chromium /usr/bin/chromium --profile EMPTY_DIR [--fif sky.fits]
//                        [--form visiomatic|tilelayer]
//
// The tilelayer form (Leaflet.TileLayer.IIP's requests) loads the default view, a
// colormap and an inversion.
// Writes DIR/result.json (read by tests/e2e/test_browser.py) and DIR/<variant>.png.
'use strict';

const path = require('path');
const { run, tileSignatures } = require('./lib');

async function load(page, log, result, args, name, query) {
  const first = log.responses.length;
  const url = args.url + '?fif=' + (args.fif || 'sky.fits') +
    (args.form ? '&form=' + args.form : '') + query;
  await page.goto(url);
  await page.waitForFunction(() => window.v2forms &&
    ((window.v2forms.loads > 0 && window.v2forms.profile !== null) || window.v2forms.errors.length));
  const state = await page.evaluate(() => window.v2forms);
  const step = {
    url: url,
    meta: state.meta,
    header: state.header,
    world: state.world,
    errors: state.errors,
    profileLength: state.profile ? state.profile.length : 0,
    profileFinite: state.profile ? state.profile.filter((v) => v !== null).length : 0,
    tiles: await tileSignatures(page, '#map img.leaflet-tile'),
    screenshot: path.join(args.out, name + '.png'),
  };
  await page.screenshot({ path: step.screenshot });
  step.responses = log.responses.slice(first);
  result.steps[name] = step;
  return step;
}

run(process.argv.slice(2), async (page, log, result, args) => {
  if (args.form === 'tilelayer') {
    await load(page, log, result, args, 'default', '');
    await load(page, log, result, args, 'jet', '&cmp=jet');
    await load(page, log, result, args, 'inv', '&inv=1');
    return;
  }
  const first = await load(page, log, result, args, 'default', '');
  const range = first.meta.ranges[0];
  const span = range[1] - range[0];
  const lo = range[0] + 0.02 * span;
  const hi = range[0] + 0.2 * span;
  result.minmax = [lo, hi];
  await load(page, log, result, args, 'jet', '&cmp=jet');
  await load(page, log, result, args, 'minmax', '&minmax=' + lo + ',' + hi);
  await load(page, log, result, args, 'gamma1', '&gamma=1');
  await load(page, log, result, args, 'all', '&cmp=jet&inv=1&minmax=' + lo + ',' + hi + '&qlt=80');
});
