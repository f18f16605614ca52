/*
 * A test page that talks to an IIP server with exactly the requests VisiOmatic 2
 * sends (docs: docs/protocol.md §12.1) and parses the metadata the way it does
 * (section 12.2: one regular expression per key, applied to the whole answer).
 * With form=tilelayer its tile requests are those of Leaflet.TileLayer.IIP instead:
 * no CTW, and every other parameter only when it differs from the plug-in's default
 * (so an 8-bit image's tiles are plain FIF=...&JTL=z,n).
 *
 * Options in the page's query string:
 *   server   IIP endpoint (default /fcgi-bin/iipsrv.fcgi)
 *   fif      image path, sent unencoded as the first parameter
 *   form     visiomatic (default) or tilelayer
 *   cmp      jet | cold | hot (grey: no CMP)
 *   inv      1: add INV
 *   gamma    display gamma (default 2.2 when Bits-per-channel >= 32, else 1)
 *   minmax   lo,hi of channel 1 (default: Min-Max-sample-values)
 *   qlt      JPEG quality (90: no QLT)
 *
 * State for the test driver: window.v2forms = {meta, header, world, loads, profile,
 * errors}; world holds the celestial coordinates VisiOmatic would show for a few image
 * pixels, from the header's TAN projection.
 */
(function () {
  'use strict';

  var options = new URLSearchParams(window.location.search);
  var server = options.get('server') || '/fcgi-bin/iipsrv.fcgi';
  var fif = options.get('fif') || 'sky.fits';
  var tilelayer = options.get('form') === 'tilelayer';
  var page = window.v2forms = {meta: null, header: {}, world: [], loads: 0, profile: null,
                               errors: []};

  function get(url, onText) {
    var xhr = new XMLHttpRequest();
    xhr.open('GET', url, true);
    xhr.onreadystatechange = function () {
      if (xhr.readyState !== 4) {
        return;
      }
      if (xhr.status !== 200) {
        page.errors.push(url + ': HTTP ' + xhr.status);
        return;
      }
      onText(xhr.responseText);
    };
    xhr.send();
  }

  // ---- metadata, parsed key by key -----------------------------------------------------

  function parseMetadata(text) {
    var m, meta = {};
    m = /IIP:(\d+\.\d*)/.exec(text);
    meta.iip = m ? m[1] : null;
    m = /Max-size:(\d+)\s+(\d+)/.exec(text);
    meta.width = parseInt(m[1], 10);
    meta.height = parseInt(m[2], 10);
    m = /Tile-size:(\d+)\s+(\d+)/.exec(text);
    meta.tileWidth = parseInt(m[1], 10);
    meta.tileHeight = parseInt(m[2], 10);
    m = /Resolution-number:(\d+)/.exec(text);
    meta.levels = parseInt(m[1], 10);
    m = /Bits-per-channel:(\d+)/.exec(text);
    meta.bits = parseInt(m[1], 10);
    m = /Min-Max-sample-values:\s*(.*)/.exec(text);
    var fields = m[1].split(/\s+/);
    meta.channels = fields.length / 2;
    meta.ranges = [];
    for (var c = 0; c < meta.channels; c++) {
      meta.ranges.push([parseFloat(fields[2 * c]), parseFloat(fields[2 * c + 1])]);
    }
    return meta;
  }

  /** A header value: the keyword padded to 8 characters, '=', a string or a number. */
  function headerValue(text, key) {
    var name = (key + '        ').slice(0, 8);
    var re = new RegExp(name + "=\\s*(?:'([^']*?)\\s*'|([-+]?[0-9]*\\.?[0-9]+([eE][-+]?[0-9]+)?))");
    var m = re.exec(text);
    if (!m) {
      return null;
    }
    return m[1] !== undefined ? m[1] : m[2];
  }

  // ---- tile requests --------------------------------------------------------------------

  function tileParameters(meta) {
    var range = meta.ranges[0];
    var gamma = options.has('gamma') ? parseFloat(options.get('gamma')) : (meta.bits >= 32 ? 2.2 : 1);
    var cmp = options.get('cmp') || 'grey';
    var query = '';
    if (cmp !== 'grey') {
      query += '&CMP=' + cmp;
    }
    if (options.get('inv') === '1') {
      query += '&INV';
    }
    if (gamma !== 1) {
      query += '&GAM=' + (1 / gamma).toFixed(4);
    }
    if (options.has('minmax')) {
      var lohi = options.get('minmax').split(',').map(parseFloat);
      if (lohi[0] !== range[0] || lohi[1] !== range[1]) {
        query += '&MINMAX=1:' + lohi[0].toString() + ',' + lohi[1].toString();
      }
    }
    if (!tilelayer) {
      query += '&CTW=1;1;1';
    }
    var quality = options.has('qlt') ? parseInt(options.get('qlt'), 10) : 90;
    if (quality !== 90) {
      query += '&QLT=' + quality;
    }
    return query;
  }

  // ---- world coordinates -----------------------------------------------------------------

  /**
   * RA, Dec (degrees) of the full-resolution image pixel (x, y), top-left origin: FITS
   * pixel (x + 0.5, NAXIS2 + 0.5 - y) (docs/protocol.md §7.6) through the CD matrix and
   * the gnomonic (TAN) projection of the header.
   */
  function world(header, meta, x, y) {
    var num = function (key, fallback) {
      var v = header[key];
      return v === null || v === undefined ? fallback : parseFloat(v);
    };
    var dx = x + 0.5 - num('CRPIX1', 0), dy = meta.height + 0.5 - y - num('CRPIX2', 0);
    var rad = Math.PI / 180;
    var xi = (num('CD1_1', 1) * dx + num('CD1_2', 0) * dy) * rad;
    var eta = (num('CD2_1', 0) * dx + num('CD2_2', 1) * dy) * rad;
    var ra0 = num('CRVAL1', 0) * rad, dec0 = num('CRVAL2', 0) * rad;
    var denom = Math.cos(dec0) - eta * Math.sin(dec0);
    var ra = ra0 + Math.atan2(xi, denom);
    var dec = Math.atan2(Math.sin(dec0) + eta * Math.cos(dec0), Math.hypot(xi, denom));
    return {x: x, y: y, ra: ((ra / rad) % 360 + 360) % 360, dec: dec / rad};
  }

  function start(meta) {
    var top = meta.levels - 1;
    var unit = 1 / Math.pow(2, top);
    var crs = L.extend({}, L.CRS.Simple, {transformation: new L.Transformation(unit, 0, unit, 0)});
    var bounds = L.latLngBounds([0, 0], [meta.height, meta.width]);
    var map = L.map('map', {crs: crs, minZoom: 0, maxZoom: top, attributionControl: false});
    var display = tileParameters(meta);
    var Layer = L.TileLayer.extend({
      getTileUrl: function (coords) {
        var scale = Math.pow(2, top - coords.z);
        var columns = Math.ceil(Math.floor(meta.width / scale) / meta.tileWidth);
        return server + '?FIF=' + fif + display + '&JTL=' + coords.z + ',' +
          (coords.x + columns * coords.y);
      }
    });
    var layer = new Layer('', {tileSize: meta.tileWidth, bounds: bounds, noWrap: true,
                               maxNativeZoom: top});
    layer.on('load', function () { page.loads += 1; });
    layer.on('tileerror', function (e) { page.errors.push('tile ' + e.tile.src); });
    layer.addTo(map);
    map.fitBounds(bounds);

    // A horizontal profile through the middle of the image, at full resolution.
    var y = Math.round(meta.height / 2);
    get(server + '?FIF=' + fif + '&PFL=' + top + ':0,' + y + '-' + (meta.width - 1) + ',' + y,
        function (text) { page.profile = JSON.parse(text).profile; });
  }

  get(server + '?FIF=' + fif + '&obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number' +
      '&obj=bits-per-channel&obj=min-max-sample-values&obj=subject', function (text) {
    var meta = parseMetadata(text);
    ['NAXIS1', 'NAXIS2', 'CTYPE1', 'CTYPE2', 'CRPIX1', 'CRPIX2', 'CRVAL1', 'CRVAL2', 'CD1_1',
     'CD1_2', 'CD2_1', 'CD2_2', 'LATPOLE']
      .forEach(function (key) { page.header[key] = headerValue(text, key); });
    page.meta = meta;
    if (/TAN/.test(page.header.CTYPE1 || '')) {
      [[0, 0], [meta.width / 2, meta.height / 2], [meta.width - 1, meta.height - 1]]
        .forEach(function (xy) { page.world.push(world(page.header, meta, xy[0], xy[1])); });
    }
    start(meta);
  });
}());
