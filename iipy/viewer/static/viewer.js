/*
 * iipy viewer: one FITS image on a Leaflet map, talking plain IIP to iipy.
 *
 *   metadata  iip?FIF=<image>&obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number
 *                 &obj=bits-per-channel&obj=min-max-sample-values&obj=subject
 *   tiles     iip?FIF=<image>[&CMP=<map>][&INV][<stretch>]{&MINMAX=<k>:<min>,<max>}
 *                 &CTW=<matrix>&JTL=<z>,<x + columns*y>
 *             <stretch>: &GAM=<1/gamma> (power), &GAM=sqrt, &GAM=log, &GAM=asinh[:<beta>],
 *             &CNT=eq (histogram equalisation), nothing for linear
 *   readout   iip?FIF=<image>&PFL=<full resolution>:<column>,<row>  (the pixel's values)
 *             wcs.json?FIF=<image>&pixel=<x>,<y>                  (its world coordinates)
 *   ranges    iip?FIF=<image>&WID=512&HEI=512&CVT=fits  (a reduced copy of the values, read
 *             here for the percentile presets)
 *   download  iip?FIF=<image>&RGN=<the view>&CVT=fits
 *
 * Map zoom z is IIP resolution z (0: the smallest level); level sizes are
 * floor(W / 2^(R-1-z)), edge tiles have their real, smaller size.  The map's units are
 * full-resolution pixels, y downwards (IIP row 0 is the top of the image, the last FITS
 * row): IIP (X, Y) is FITS (X + 0.5, H + 0.5 - Y).
 *
 * The view lives in the address's hash, rewritten as it changes, so that a copied link
 * reopens it:  #fif=<image>&x=<FITS x>&y=<FITS y>&zoom=<z>&stretch=<name>[&gamma=<g>]
 * [&beta=<b>][&cmap=<name>][&inv=1][&mode=mono|colour][&chan=<1-based>]
 * [&min=<v>,<v>..&max=<v>,<v>..: one per channel, or one for all][&mix=<rrggbb>,..].
 * ra=<deg>&dec=<deg> may stand for x and y (the server turns them into a pixel).
 *
 * The page exposes its state as window.iipyViewer (used by the browser tests).
 */
(function () {
  'use strict';

  var IIP = 'iip';
  var WCS = 'wcs.json';
  var OBJECTS = ['IIP,1.0', 'max-size', 'tile-size', 'resolution-number', 'bits-per-channel',
                 'min-max-sample-values', 'subject'];
  /** Most channels shown as a colour mix by default (more: one channel at a time). */
  var MAX_DEFAULT_MIX = 8;
  var STRETCHES = ['linear', 'sqrt', 'log', 'asinh', 'power', 'equalise'];
  var COLORMAPS = ['grey', 'jet', 'hot', 'cold'];
  var DEFAULT_BETA = 0.1;
  /** Largest side of the reduced copy the range presets are computed from. */
  var SAMPLE_SIZE = 512;
  /** Milliseconds between two readout look-ups while the cursor moves. */
  var READOUT_INTERVAL = 40;

  var viewer = {
    map: null,        // the Leaflet map
    layer: null,      // the IIP tile layer
    image: null,      // FIF of the image shown
    meta: null,       // its metadata
    state: null,      // display settings
    loads: 0,         // 'load' events of the tile layer (all visible tiles loaded)
    tileErrors: 0,
    ready: false,     // true once the first image is on the map
    readout: null,    // the last values shown under the cursor
    lookups: 0,       // readout answers received
    samples: null,    // the reduced copy of the values (range presets)
    hash: ''          // the hash this page wrote last
  };
  window.iipyViewer = viewer;

  function byId(id) {
    return document.getElementById(id);
  }

  function setStatus(text, isError) {
    var status = byId('status');
    status.textContent = text || '';
    status.className = 'status' + (isError ? ' error' : '');
  }

  /** A FIF value: URL-encoded except the path separators, so nested paths stay readable. */
  function encodeFif(fif) {
    return encodeURIComponent(fif).replace(/%2F/g, '/');
  }

  function fetchOk(url, as) {
    return fetch(url).then(function (response) {
      if (!response.ok) {
        return response.text().then(function (text) {
          throw new Error(url + ': ' + response.status + ' ' + text.slice(0, 200));
        });
      }
      return response[as]();
    });
  }

  // ---- metadata -------------------------------------------------------------------------

  /** A string value of the FITS header sent as obj=subject (80-character cards). */
  function headerString(text, key) {
    var name = (key + '        ').slice(0, 8);
    var match = new RegExp(name + "=\\s*'([^']*)'").exec(text);
    return match ? match[1].replace(/\s+$/, '') : '';
  }

  function parseMetadata(text) {
    function find(re, what) {
      var match = re.exec(text);
      if (!match) {
        throw new Error('the metadata answer has no ' + what);
      }
      return match;
    }
    var size = find(/Max-size:\s*(\d+)\s+(\d+)/, 'Max-size');
    var tile = find(/Tile-size:\s*(\d+)\s+(\d+)/, 'Tile-size');
    var levels = find(/Resolution-number:\s*(\d+)/, 'Resolution-number');
    var bits = /Bits-per-channel:\s*(\d+)/.exec(text);
    var range = /Min-Max-sample-values:\s*([^\r\n]*)/.exec(text);
    var values = range ? range[1].trim().split(/\s+/).map(parseFloat) : [];
    var count = Math.max(1, Math.floor(values.length / 2));
    var channels = [];
    for (var c = 0; c < count; c++) {
      var lo = values[2 * c], hi = values[2 * c + 1];
      if (!isFinite(lo) || !isFinite(hi) || !(lo < hi)) {
        lo = 0;
        hi = 1;
      }
      var label = headerString(text, 'CHAN' + ('000' + (c + 1)).slice(-4));
      channels.push({label: label || 'Channel ' + (c + 1), min: lo, max: hi});
    }
    return {
      width: +size[1], height: +size[2],
      tileWidth: +tile[1], tileHeight: +tile[2],
      levels: +levels[1],
      bits: bits ? +bits[1] : 8,
      channels: channels,
      object: headerString(text, 'OBJECT')
    };
  }

  function levelSize(meta, z) {
    var scale = Math.pow(2, meta.levels - 1 - z);
    return {w: Math.floor(meta.width / scale), h: Math.floor(meta.height / scale)};
  }

  // ---- display settings -> IIP parameters -----------------------------------------------

  /** Blue to red across the channels (a 3-band cube: blue, green, red). */
  function defaultColour(c, count) {
    if (count === 1) {
      return '#ffffff';
    }
    var hue = 240 * (1 - c / (count - 1));
    var rgb = [0, 0, 0];
    var sector = hue / 60, f = sector - Math.floor(sector);
    switch (Math.floor(sector) % 6) {
      case 0: rgb = [1, f, 0]; break;
      case 1: rgb = [1 - f, 1, 0]; break;
      case 2: rgb = [0, 1, f]; break;
      case 3: rgb = [0, 1 - f, 1]; break;
      default: rgb = [f, 0, 1]; break;
    }
    return '#' + rgb.map(function (v) {
      return ('0' + Math.round(255 * v).toString(16)).slice(-2);
    }).join('');
  }

  function defaultState(meta) {
    var count = meta.channels.length;
    var float = meta.bits >= 32;
    return {
      colormap: 'grey',
      invert: false,
      stretch: float ? 'power' : 'linear',
      gamma: float ? 2.2 : 1,
      beta: DEFAULT_BETA,
      mode: count > 1 && count <= MAX_DEFAULT_MIX ? 'colour' : 'mono',
      channel: 0,
      channels: meta.channels.map(function (ch, c) {
        return {min: ch.min, max: ch.max, colour: defaultColour(c, count)};
      })
    };
  }

  function rgbOf(hex) {
    var n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  function number(v) {
    return String(+v.toFixed(4));
  }

  /** The CTW matrix: rows R, G, B; one column per channel (up to the last one used). */
  function colourTwist(state) {
    var count = state.channels.length;
    if (state.mode === 'mono' || count === 1) {
      var row = [];
      for (var j = 0; j <= state.channel; j++) {
        row.push(j === state.channel ? 1 : 0);
      }
      return [row.join(','), row.join(','), row.join(',')].join(';');
    }
    var rows = [[], [], []], sums = [0, 0, 0];
    state.channels.forEach(function (ch) {
      var rgb = rgbOf(ch.colour);
      for (var k = 0; k < 3; k++) {
        rows[k].push(rgb[k] / 255);
        sums[k] += rgb[k] / 255;
      }
    });
    return rows.map(function (row, k) {
      var norm = sums[k] > 1 ? sums[k] : 1;
      return row.map(function (w) { return number(w / norm); }).join(',');
    }).join(';');
  }

  /** The stretch as IIP modifiers (docs/protocol.md §5.13, §5.14). */
  function stretchQuery(state) {
    switch (state.stretch) {
      case 'sqrt': return '&GAM=sqrt';
      case 'log': return '&GAM=log';
      case 'asinh':
        return '&GAM=asinh' + (state.beta !== DEFAULT_BETA ? ':' + state.beta : '');
      case 'equalise': return '&CNT=eq';
      case 'power':
        return state.gamma !== 1 ? '&GAM=' + (1 / state.gamma).toFixed(4) : '';
      default: return '';
    }
  }

  /** The display part of a tile request, in the order iipsrv clients send it. */
  function displayQuery(meta, state) {
    var query = '';
    var colour = state.mode === 'colour' && state.channels.length > 1;
    if (state.colormap !== 'grey' && !colour) {
      query += '&CMP=' + state.colormap;
    }
    if (state.invert) {
      query += '&INV';
    }
    query += stretchQuery(state);
    state.channels.forEach(function (ch, c) {
      var def = meta.channels[c];
      if (ch.min !== def.min || ch.max !== def.max) {
        query += '&MINMAX=' + (c + 1) + ':' + ch.min + ',' + ch.max;
      }
    });
    return query + '&CTW=' + colourTwist(state);
  }

  // ---- the view in the address ----------------------------------------------------------

  function parseHash(hash) {
    var params = {};
    hash.replace(/^#/, '').split('&').forEach(function (part) {
      if (!part) {
        return;
      }
      var eq = part.indexOf('=');
      var key = eq < 0 ? part : part.slice(0, eq);
      var value = eq < 0 ? '' : part.slice(eq + 1);
      try {
        params[decodeURIComponent(key)] = decodeURIComponent(value);
      } catch (e) {
        // a malformed escape: the parameter is ignored
      }
    });
    return params;
  }

  function finite(text) {
    var value = parseFloat(text);
    return text !== undefined && text !== '' && isFinite(value) ? value : null;
  }

  /** ``count`` comma-separated numbers (one stands for all), or null. */
  function numbers(text, count) {
    if (!text) {
      return null;
    }
    var values = text.split(',').map(finite);
    if (values.length === 1) {
      values = values.concat(new Array(count - 1).fill(values[0]));
    }
    return values.length === count && values.every(function (v) { return v !== null; }) ?
      values : null;
  }

  /** The display state the hash asks for: the image's defaults, overridden where the
   * hash holds a valid value. */
  function stateFromParams(meta, params) {
    var state = defaultState(meta);
    var count = meta.channels.length;
    if (STRETCHES.indexOf(params.stretch) >= 0) {
      state.stretch = params.stretch;
    }
    var gamma = finite(params.gamma), beta = finite(params.beta);
    if (gamma !== null && gamma > 0) {
      state.gamma = gamma;
    }
    if (beta !== null && beta > 0) {
      state.beta = beta;
    }
    if (COLORMAPS.indexOf(params.cmap) >= 0) {
      state.colormap = params.cmap;
    }
    if (params.inv === '1') {
      state.invert = true;
    }
    if (count > 1 && (params.mode === 'mono' || params.mode === 'colour')) {
      state.mode = params.mode;
    }
    var chan = parseInt(params.chan, 10);
    if (chan >= 1 && chan <= count) {
      state.channel = chan - 1;
      if (!params.mode) {
        state.mode = 'mono';
      }
    }
    var mins = numbers(params.min, count), maxs = numbers(params.max, count);
    if (mins && maxs) {
      state.channels.forEach(function (ch, c) {
        if (mins[c] < maxs[c]) {
          ch.min = mins[c];
          ch.max = maxs[c];
        }
      });
    }
    var mix = params.mix ? params.mix.split(',') : [];
    if (mix.length === count && mix.every(function (m) { return /^[0-9a-f]{6}$/i.test(m); })) {
      state.channels.forEach(function (ch, c) { ch.colour = '#' + mix[c].toLowerCase(); });
    }
    return state;
  }

  /** The requested centre and zoom: {x, y} in FITS pixels or {ra, dec}, or null. */
  function viewFromParams(params) {
    var zoom = parseInt(params.zoom, 10);
    var view = {zoom: isFinite(zoom) ? zoom : null};
    var x = finite(params.x), y = finite(params.y);
    var ra = finite(params.ra), dec = finite(params.dec);
    if (x !== null && y !== null) {
      view.x = x;
      view.y = y;
    } else if (ra !== null && dec !== null) {
      view.ra = ra;
      view.dec = dec;
    } else if (view.zoom === null) {
      return null;
    }
    return view;
  }

  function hashOf() {
    var meta = viewer.meta, state = viewer.state, map = viewer.map;
    var parts = ['fif=' + encodeFif(viewer.image)];
    if (map) {
      var top = meta.levels - 1;
      var p = map.project(map.getCenter(), top);
      parts.push('x=' + (p.x + 0.5).toFixed(2), 'y=' + (meta.height + 0.5 - p.y).toFixed(2),
                 'zoom=' + map.getZoom());
    }
    parts.push('stretch=' + state.stretch);
    if (state.stretch === 'power') {
      parts.push('gamma=' + state.gamma);
    } else if (state.stretch === 'asinh' && state.beta !== DEFAULT_BETA) {
      parts.push('beta=' + state.beta);
    }
    if (state.colormap !== 'grey') {
      parts.push('cmap=' + state.colormap);
    }
    if (state.invert) {
      parts.push('inv=1');
    }
    var count = state.channels.length;
    if (count > 1) {
      parts.push('mode=' + state.mode);
      if (state.mode === 'mono') {
        parts.push('chan=' + (state.channel + 1));
      }
    }
    var changed = state.channels.some(function (ch, c) {
      return ch.min !== meta.channels[c].min || ch.max !== meta.channels[c].max;
    });
    if (changed) {
      parts.push('min=' + state.channels.map(function (ch) { return ch.min; }).join(','),
                 'max=' + state.channels.map(function (ch) { return ch.max; }).join(','));
    }
    var mixed = count > 1 && state.channels.some(function (ch, c) {
      return ch.colour !== defaultColour(c, count);
    });
    if (mixed) {
      parts.push('mix=' + state.channels.map(function (ch) {
        return ch.colour.slice(1);
      }).join(','));
    }
    return '#' + parts.join('&');
  }

  /** Write the view into the address (no new history entry). */
  function saveView() {
    if (!viewer.image || !viewer.state) {
      return;
    }
    var hash = hashOf();
    if (hash !== viewer.hash) {
      viewer.hash = hash;
      history.replaceState(null, '', hash);
    }
    updateDownload();
  }

  // ---- the tile layer -------------------------------------------------------------------

  var IIPLayer = L.GridLayer.extend({
    initialize: function (fif, meta, query, options) {
      this._fif = fif;
      this._meta = meta;
      this._query = query;
      L.GridLayer.prototype.initialize.call(this, options);
    },

    setQuery: function (query) {
      if (query !== this._query) {
        this._query = query;
        this.redraw();
      }
      return this;
    },

    tileUrl: function (z, x, y, columns) {
      return IIP + '?FIF=' + encodeFif(this._fif) + this._query +
        '&JTL=' + z + ',' + (x + columns * y);
    },

    createTile: function (coords, done) {
      var meta = this._meta;
      var box = L.DomUtil.create('div', 'iipy-tile');
      var size = levelSize(meta, coords.z);
      var columns = Math.ceil(size.w / meta.tileWidth);
      var rows = Math.ceil(size.h / meta.tileHeight);
      if (coords.x < 0 || coords.y < 0 || coords.x >= columns || coords.y >= rows) {
        window.setTimeout(function () { done(null, box); }, 0);
        return box;
      }
      var img = L.DomUtil.create('img', '', box);
      img.alt = '';
      img.width = Math.min(meta.tileWidth, size.w - coords.x * meta.tileWidth);
      img.height = Math.min(meta.tileHeight, size.h - coords.y * meta.tileHeight);
      img.onload = function () { done(null, box); };
      img.onerror = function () { done(new Error('tile ' + img.src + ' failed'), box); };
      img.src = this.tileUrl(coords.z, coords.x, coords.y, columns);
      return box;
    }
  });

  // ---- under the cursor -----------------------------------------------------------------

  function sexagesimal(value, hours, decimals) {
    var sign = value < 0 ? '-' : (hours ? '' : '+');
    var v = Math.abs(hours ? value / 15 : value);
    var whole = Math.floor(v), minutes = Math.floor((v - whole) * 60);
    var seconds = ((v - whole) * 60 - minutes) * 60;
    var text = seconds.toFixed(decimals);
    if (parseFloat(text) >= 60) {  // 59.9996 shown as 60.000: carry
      seconds = 0;
      text = seconds.toFixed(decimals);
      minutes += 1;
      if (minutes === 60) {
        minutes = 0;
        whole += 1;
      }
    }
    function two(n) { return (n < 10 ? '0' : '') + n; }
    return sign + two(whole) + ':' + two(minutes) + ':' + (parseFloat(text) < 10 ? '0' : '') +
      text;
  }

  function formatValue(v) {
    if (v === null || v === undefined || !isFinite(v)) {
      return 'NaN';
    }
    return Math.abs(v) >= 1e7 || (v !== 0 && Math.abs(v) < 1e-3) ?
      v.toExponential(6) : String(+v.toPrecision(8));
  }

  function showPixel(x, y) {
    byId('readout-pixel').textContent = x === null ? '–' : 'x ' + x + ', y ' + y;
  }

  function showValues(values) {
    var state = viewer.state, meta = viewer.meta;
    var text;
    if (!values) {
      text = '–';
    } else if (values.length === 1) {
      text = formatValue(values[0]);
    } else if (state.mode === 'mono') {
      text = formatValue(values[state.channel]) + ' (' + meta.channels[state.channel].label + ')';
    } else {
      text = values.map(formatValue).join(' / ');
    }
    byId('readout-value').textContent = text;
  }

  function showWorld(answer) {
    if (!answer || !answer.celestial || !answer.world) {
      byId('readout-lon').textContent = '–';
      byId('readout-lat').textContent = '–';
      byId('readout-system').textContent = answer && !answer.celestial ?
        'no celestial WCS in the header' : '';
      return;
    }
    var lon = answer.world[0], lat = answer.world[1];
    byId('readout-lon-name').textContent = answer.lon_name;
    byId('readout-lat-name').textContent = answer.lat_name;
    if (answer.lon_name === 'RA') {
      byId('readout-lon').textContent = sexagesimal(lon, true, 3) + '  ' + lon.toFixed(6) + '°';
      byId('readout-lat').textContent = sexagesimal(lat, false, 2) + '  ' + lat.toFixed(6) + '°';
    } else {
      byId('readout-lon').textContent = lon.toFixed(6) + '°';
      byId('readout-lat').textContent = lat.toFixed(6) + '°';
    }
    byId('readout-system').textContent = answer.system;
  }

  /** Look up the pixel's values and world coordinates, one request of each kind at a
   * time: while one is on its way, only the latest position waits. */
  var lookup = {pending: null, busy: false, noWcs: false};

  function requestReadout(col, row) {
    lookup.pending = {fif: viewer.image, col: col, row: row};
    if (!lookup.busy) {
      runReadout();
    }
  }

  function runReadout() {
    var job = lookup.pending;
    lookup.pending = null;
    if (!job || job.fif !== viewer.image) {
      lookup.busy = false;
      return;
    }
    lookup.busy = true;
    var meta = viewer.meta;
    var x = job.col + 1, y = meta.height - job.row;
    var pfl = fetchOk(IIP + '?FIF=' + encodeFif(job.fif) + '&PFL=' + (meta.levels - 1) + ':' +
                      job.col + ',' + job.row, 'json');
    var wcs = lookup.noWcs ? Promise.resolve({celestial: false}) :
      fetchOk(WCS + '?FIF=' + encodeFif(job.fif) + '&pixel=' + x + ',' + y, 'json');
    Promise.all([pfl, wcs]).then(function (answers) {
      if (job.fif !== viewer.image) {
        return;
      }
      var values = answers[0].profile, world = answers[1];
      lookup.noWcs = !world.celestial;
      viewer.readout = {
        x: x, y: y, values: values,
        lon: world.world ? world.world[0] : null, lat: world.world ? world.world[1] : null,
        lonName: world.lon_name || null, latName: world.lat_name || null,
        system: world.system || null
      };
      viewer.lookups += 1;
      showValues(values);
      showWorld(world);
    }).catch(function (err) {
      setStatus(String(err.message || err), true);
    }).then(function () {
      window.setTimeout(runReadout, READOUT_INTERVAL);
    });
  }

  function clearReadout() {
    showPixel(null, null);
    showValues(null);
    showWorld(null);
    viewer.readout = null;
  }

  // ---- display ranges -------------------------------------------------------------------

  /** A FITS file of 32-bit floats (CVT=fits): {shape: [C, h, w], data: Float32Array}. */
  function parseFits(buffer) {
    var bytes = new Uint8Array(buffer);
    var cards = {}, offset = 0, end = false;
    while (!end && offset + 2880 <= bytes.length) {
      for (var i = 0; i < 36; i++) {
        var card = String.fromCharCode.apply(null, bytes.subarray(offset + 80 * i,
                                                                  offset + 80 * i + 80));
        var key = card.slice(0, 8).trim();
        if (key === 'END') {
          end = true;
          break;
        }
        if (card.slice(8, 10) === '= ') {
          cards[key] = card.slice(10).split('/')[0].trim();
        }
      }
      offset += 2880;
    }
    if (!end || +cards.BITPIX !== -32) {
      throw new Error('not a FITS file of 32-bit floats');
    }
    var w = +cards.NAXIS1, h = +cards.NAXIS2, c = +cards.NAXIS >= 3 ? +cards.NAXIS3 : 1;
    var view = new DataView(buffer, offset, w * h * c * 4);
    var data = new Float32Array(w * h * c);
    for (var k = 0; k < data.length; k++) {
      data[k] = view.getFloat32(4 * k, false);
    }
    return {shape: [c, h, w], data: data};
  }

  /** Sorted finite values of each channel of the reduced copy. */
  function loadSamples() {
    var fif = viewer.image;
    if (viewer.samples && viewer.samples.fif === fif) {
      return Promise.resolve(viewer.samples);
    }
    var url = IIP + '?FIF=' + encodeFif(fif) + '&WID=' + SAMPLE_SIZE + '&HEI=' + SAMPLE_SIZE +
      '&CVT=fits';
    return fetchOk(url, 'arrayBuffer').then(function (buffer) {
      var fits = parseFits(buffer);
      var n = fits.shape[1] * fits.shape[2];
      var sorted = [];
      for (var c = 0; c < fits.shape[0]; c++) {
        var plane = Array.prototype.filter.call(fits.data.subarray(c * n, (c + 1) * n),
                                                isFinite);
        sorted.push(Float64Array.from(plane).sort());
      }
      viewer.samples = {fif: fif, url: url, sorted: sorted};
      return viewer.samples;
    });
  }

  /** The q quantile (0..1) of sorted values, linearly interpolated (numpy's default). */
  function quantile(sorted, q) {
    if (!sorted.length) {
      return null;
    }
    var pos = q * (sorted.length - 1), i = Math.floor(pos), f = pos - i;
    return i + 1 < sorted.length ? sorted[i] + f * (sorted[i + 1] - sorted[i]) : sorted[i];
  }

  /** Range presets: the server's default, the extremes, or the central p % of values. */
  function applyPreset(name) {
    var meta = viewer.meta, state = viewer.state;
    if (!name) {
      return Promise.resolve();
    }
    if (name === 'default') {
      state.channels.forEach(function (ch, c) {
        ch.min = meta.channels[c].min;
        ch.max = meta.channels[c].max;
      });
      syncControls();
      redraw();
      return Promise.resolve();
    }
    setStatus('Reading a reduced copy of the values…');
    return loadSamples().then(function (samples) {
      var clip = name === 'minmax' ? 0 : (1 - parseFloat(name) / 100) / 2;
      viewer.presetRanges = [];
      state.channels.forEach(function (ch, c) {
        var lo = quantile(samples.sorted[c], clip), hi = quantile(samples.sorted[c], 1 - clip);
        viewer.presetRanges.push([lo, hi]);
        if (lo !== null && hi !== null && lo < hi) {
          ch.min = lo;
          ch.max = hi;
        }
      });
      setStatus('');
      syncControls();
      byId('range-preset').value = name;
      redraw();
    }).catch(function (err) {
      setStatus(String(err.message || err), true);
    });
  }

  // ---- download -------------------------------------------------------------------------

  /** RGN of the part of the image in view (fractions of the full size), or '' for all. */
  function viewRegion() {
    var map = viewer.map, meta = viewer.meta;
    if (!map) {
      return '';
    }
    // (the map's latitude grows downwards: corners are sorted after projection)
    var top = meta.levels - 1, bounds = map.getBounds();
    var a = map.project(bounds.getNorthWest(), top), b = map.project(bounds.getSouthEast(), top);
    function clamp(v, hi) { return Math.min(hi, Math.max(0, v)); }
    var x0 = clamp(Math.min(a.x, b.x), meta.width), x1 = clamp(Math.max(a.x, b.x), meta.width);
    var y0 = clamp(Math.min(a.y, b.y), meta.height), y1 = clamp(Math.max(a.y, b.y), meta.height);
    if (!(x1 > x0 && y1 > y0) || (x0 === 0 && y0 === 0 && x1 === meta.width &&
                                  y1 === meta.height)) {
      return '';
    }
    function frac(v, size) { return String(+(v / size).toFixed(6)); }
    return '&RGN=' + [frac(x0, meta.width), frac(y0, meta.height), frac(x1 - x0, meta.width),
                      frac(y1 - y0, meta.height)].join(',');
  }

  function updateDownload() {
    if (viewer.image) {
      byId('download').href = IIP + '?FIF=' + encodeFif(viewer.image) + viewRegion() +
        '&CVT=fits';
    }
  }

  // ---- the map --------------------------------------------------------------------------

  /** The map's LatLng of FITS pixel position (x, y). */
  function latLngOf(map, meta, x, y) {
    return map.unproject([x - 0.5, meta.height + 0.5 - y], meta.levels - 1);
  }

  function showImage(fif, meta, view) {
    if (viewer.map) {
      viewer.map.remove();
    }
    var top = meta.levels - 1;
    var unit = 1 / Math.pow(2, top);
    var crs = L.extend({}, L.CRS.Simple, {transformation: new L.Transformation(unit, 0, unit, 0)});
    var bounds = L.latLngBounds([0, 0], [meta.height, meta.width]);
    var map = L.map('map', {crs: crs, minZoom: 0, maxZoom: top + 4, attributionControl: false});
    var layer = new IIPLayer(fif, meta, displayQuery(meta, viewer.state), {
      tileSize: L.point(meta.tileWidth, meta.tileHeight),
      bounds: bounds,
      noWrap: true,
      minNativeZoom: 0,
      maxNativeZoom: top,
      keepBuffer: 1
    });
    layer.on('loading', function () { setStatus('Loading tiles…'); });
    layer.on('load', function () {
      viewer.loads += 1;
      viewer.ready = true;
      setStatus(viewer.tileErrors ? viewer.tileErrors + ' tile(s) failed to load' : '',
                viewer.tileErrors > 0);
    });
    layer.on('tileerror', function () { viewer.tileErrors += 1; });
    map.on('mousemove', function (e) {
      var p = map.project(e.latlng, top);
      var col = Math.floor(p.x), row = Math.floor(p.y);
      if (col < 0 || row < 0 || col >= meta.width || row >= meta.height) {
        clearReadout();
        return;
      }
      showPixel(col + 1, meta.height - row);
      requestReadout(col, row);
    });
    map.on('moveend', saveView);
    layer.addTo(map);
    viewer.map = map;
    viewer.layer = layer;
    if (view && view.x !== undefined) {
      map.setView(latLngOf(map, meta, view.x, view.y),
                  view.zoom === null ? map.getBoundsZoom(bounds) : view.zoom);
    } else if (view && view.zoom !== null) {
      map.setView(bounds.getCenter(), view.zoom);
    } else {
      map.fitBounds(bounds);
    }
  }

  function redraw() {
    if (viewer.layer) {
      viewer.layer.setQuery(displayQuery(viewer.meta, viewer.state));
    }
    saveView();
  }

  // ---- controls -------------------------------------------------------------------------

  /** A value as shown in an input: 7 significant digits (the state keeps every digit). */
  function shown(value) {
    return String(Number(value.toPrecision(7)));
  }

  function numberInput(value, onChange) {
    var input = document.createElement('input');
    input.type = 'number';
    input.step = 'any';
    input.value = shown(value);
    input.addEventListener('change', function () { onChange(input); });
    return input;
  }

  function buildChannelTable() {
    var meta = viewer.meta, state = viewer.state;
    var body = document.querySelector('#channel-table tbody');
    body.textContent = '';
    state.channels.forEach(function (ch, c) {
      var tr = document.createElement('tr');

      var pick = document.createElement('td');
      pick.className = 'pick-col';
      var radio = document.createElement('input');
      radio.type = 'radio';
      radio.name = 'channel';
      radio.id = 'channel-' + c;
      radio.checked = c === state.channel;
      radio.title = 'Show this channel alone';
      radio.addEventListener('change', function () {
        state.channel = c;
        state.mode = 'mono';
        syncControls();
        redraw();
      });
      pick.appendChild(radio);
      tr.appendChild(pick);

      var label = document.createElement('td');
      label.className = 'label';
      label.textContent = meta.channels[c].label;
      label.title = meta.channels[c].label;
      tr.appendChild(label);

      function rangeChanged(input, which) {
        var value = parseFloat(input.value);
        var lo = which === 'min' ? value : ch.min, hi = which === 'max' ? value : ch.max;
        if (!isFinite(value) || !(lo < hi)) {
          setStatus('Min must be below max', true);
          input.value = shown(ch[which]);
          return;
        }
        setStatus('');
        ch[which] = value;
        byId('range-preset').value = '';
        redraw();
      }
      var min = document.createElement('td');
      var minInput = numberInput(ch.min, function (input) { rangeChanged(input, 'min'); });
      minInput.id = 'min-' + c;
      minInput.setAttribute('aria-label', 'Minimum of ' + meta.channels[c].label);
      min.appendChild(minInput);
      tr.appendChild(min);
      var max = document.createElement('td');
      var maxInput = numberInput(ch.max, function (input) { rangeChanged(input, 'max'); });
      maxInput.id = 'max-' + c;
      maxInput.setAttribute('aria-label', 'Maximum of ' + meta.channels[c].label);
      max.appendChild(maxInput);
      tr.appendChild(max);

      var colour = document.createElement('td');
      colour.className = 'colour-col';
      var picker = document.createElement('input');
      picker.type = 'color';
      picker.id = 'colour-' + c;
      picker.value = ch.colour;
      picker.title = 'Colour of this channel in the mix (black: left out)';
      picker.addEventListener('change', function () {
        ch.colour = picker.value;
        redraw();
      });
      colour.appendChild(picker);
      tr.appendChild(colour);
      body.appendChild(tr);
    });
  }

  function syncControls() {
    var state = viewer.state, meta = viewer.meta;
    var single = meta.channels.length === 1;
    var colour = state.mode === 'colour' && !single;
    byId('colormap').value = state.colormap;
    byId('colormap').disabled = colour;
    byId('colormap').title = colour ? 'Colormaps apply to one channel: choose "one channel"' : '';
    byId('invert').checked = state.invert;
    byId('stretch').value = state.stretch;
    byId('gamma').value = String(state.gamma);
    byId('beta').value = String(state.beta);
    byId('gamma-row').classList.toggle('hidden', state.stretch !== 'power');
    byId('beta-row').classList.toggle('hidden', state.stretch !== 'asinh');
    byId('mode').value = colour ? 'colour' : 'mono';
    var panel = byId('channels');
    panel.classList.toggle('single-channel', single);
    panel.classList.toggle('mono-mode', !colour);
    state.channels.forEach(function (ch, c) {
      byId('channel-' + c).checked = c === state.channel;
      byId('min-' + c).value = shown(ch.min);
      byId('max-' + c).value = shown(ch.max);
      byId('colour-' + c).value = ch.colour;
    });
  }

  function describe(fif, meta) {
    var parts = [meta.width + ' × ' + meta.height + ' px', meta.levels + ' levels',
                 meta.channels.length + (meta.channels.length > 1 ? ' channels' : ' channel'),
                 meta.bits + ' bits'];
    return (meta.object ? meta.object + ': ' : '') + parts.join(', ');
  }

  /** The pixel of (ra, dec), from the server (the image's own WCS), or null. */
  function resolveWorld(fif, view) {
    if (!view || view.ra === undefined) {
      return Promise.resolve(view);
    }
    return fetchOk(WCS + '?FIF=' + encodeFif(fif) + '&world=' + view.ra + ',' + view.dec, 'json')
      .then(function (answer) {
        if (!answer.celestial || !answer.pixel) {
          setStatus('RA ' + view.ra + ', Dec ' + view.dec + ' is not on this image', true);
          return {zoom: view.zoom};
        }
        return {x: answer.pixel[0], y: answer.pixel[1], zoom: view.zoom};
      });
  }

  /** Open an image with the view and display settings of ``params`` (a parsed hash). */
  function openImage(fif, params) {
    params = params || {};
    setStatus('Opening ' + fif + '… (the first look at a large file builds its reduced ' +
              'resolution levels: see the terminal)');
    var url = IIP + '?FIF=' + encodeFif(fif) + OBJECTS.map(function (o) {
      return '&obj=' + o;
    }).join('');
    var meta;
    return fetchOk(url, 'text').then(function (text) {
      meta = parseMetadata(text);
      return resolveWorld(fif, viewFromParams(params));
    }).then(function (view) {
      viewer.image = fif;
      viewer.meta = meta;
      viewer.state = stateFromParams(meta, params);
      viewer.tileErrors = 0;
      viewer.samples = null;
      lookup.noWcs = false;
      clearReadout();
      byId('info').textContent = describe(fif, meta);
      byId('image').value = fif;
      byId('range-preset').value = '';
      buildChannelTable();
      syncControls();
      showImage(fif, meta, view);
      saveView();
    }).catch(function (err) {
      setStatus(String(err.message || err), true);
    });
  }

  /** The address was edited (or a link followed in the same tab): show what it says. */
  function hashChanged() {
    if (location.hash === viewer.hash) {
      return;
    }
    var params = parseHash(location.hash);
    var known = Array.prototype.some.call(byId('image').options, function (o) {
      return o.value === params.fif;
    });
    if (known) {
      openImage(params.fif, params);
    }
  }

  function bindControls() {
    byId('image').addEventListener('change', function () { openImage(byId('image').value); });
    byId('colormap').addEventListener('change', function () {
      viewer.state.colormap = byId('colormap').value;
      redraw();
    });
    byId('invert').addEventListener('change', function () {
      viewer.state.invert = byId('invert').checked;
      redraw();
    });
    byId('stretch').addEventListener('change', function () {
      viewer.state.stretch = byId('stretch').value;
      syncControls();
      redraw();
    });
    function positive(id, key, what) {
      byId(id).addEventListener('change', function () {
        var value = parseFloat(byId(id).value);
        if (!(value > 0) || !isFinite(value)) {
          setStatus(what + ' must be a positive number', true);
          byId(id).value = String(viewer.state[key]);
          return;
        }
        setStatus('');
        viewer.state[key] = value;
        redraw();
      });
    }
    positive('gamma', 'gamma', 'Gamma');
    positive('beta', 'beta', 'The softening');
    byId('range-preset').addEventListener('change', function () {
      applyPreset(byId('range-preset').value);
    });
    byId('mode').addEventListener('change', function () {
      viewer.state.mode = byId('mode').value;
      syncControls();
      redraw();
    });
    byId('reset').addEventListener('click', function () {
      if (viewer.meta) {
        viewer.state = defaultState(viewer.meta);
        byId('range-preset').value = '';
        syncControls();
        redraw();
      }
    });
    byId('download').addEventListener('click', updateDownload);
    window.addEventListener('hashchange', hashChanged);
  }

  function start() {
    bindControls();
    fetchOk('images.json', 'json').then(function (list) {
      var select = byId('image');
      list.images.forEach(function (image) {
        var option = document.createElement('option');
        option.value = image.fif;
        option.textContent = image.fif;
        select.appendChild(option);
      });
      if (!list.images.length) {
        setStatus('No FITS file found in the given paths', true);
        return;
      }
      var params = parseHash(location.hash);
      var known = list.images.some(function (image) { return image.fif === params.fif; });
      openImage(known ? params.fif : list.images[0].fif, known ? params : {});
    }).catch(function (err) {
      setStatus(String(err.message || err), true);
    });
  }

  viewer.parseMetadata = parseMetadata;
  viewer.displayQuery = displayQuery;
  viewer.openImage = openImage;
  viewer.parseHash = parseHash;
  viewer.quantile = quantile;
  /** The container point (page pixels inside the map) of FITS pixel position (x, y). */
  viewer.containerPointOf = function (x, y) {
    return viewer.map.latLngToContainerPoint(latLngOf(viewer.map, viewer.meta, x, y));
  };
  /** The map's centre in FITS pixels. */
  viewer.centre = function () {
    var p = viewer.map.project(viewer.map.getCenter(), viewer.meta.levels - 1);
    return {x: p.x + 0.5, y: viewer.meta.height + 0.5 - p.y, zoom: viewer.map.getZoom()};
  };

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
}());
