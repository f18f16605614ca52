/*
 * iipy viewer: one FITS image on a Leaflet map, talking plain IIP to iipy.
 *
 *   metadata  iip?FIF=<image>&obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number
 *                 &obj=bits-per-channel&obj=min-max-sample-values&obj=subject
 *   tiles     iip?FIF=<image>[&CMP=<map>][&INV][&GAM=<1/gamma>]{&MINMAX=<k>:<min>,<max>}
 *                 &CTW=<matrix>&JTL=<z>,<x + columns*y>
 *
 * Map zoom z is IIP resolution z (0: the smallest level); level sizes are
 * floor(W / 2^(R-1-z)), edge tiles have their real, smaller size.  The map's units are
 * full-resolution pixels, y downwards (IIP row 0 is the top of the image).
 *
 * The page exposes its state as window.iipyViewer (used by the browser tests).
 */
(function () {
  'use strict';

  var IIP = 'iip';
  var OBJECTS = ['IIP,1.0', 'max-size', 'tile-size', 'resolution-number', 'bits-per-channel',
                 'min-max-sample-values', 'subject'];
  /** Most channels shown as a colour mix by default (more: one channel at a time). */
  var MAX_DEFAULT_MIX = 8;

  var viewer = {
    map: null,        // the Leaflet map
    layer: null,      // the IIP tile layer
    image: null,      // FIF of the image shown
    meta: null,       // its metadata
    state: null,      // display settings
    loads: 0,         // 'load' events of the tile layer (all visible tiles loaded)
    tileErrors: 0,
    ready: false      // true once the first image is on the map
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
    return {
      colormap: 'grey',
      invert: false,
      gamma: meta.bits >= 32 ? 2.2 : 1,
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
    if (state.gamma !== 1) {
      query += '&GAM=' + (1 / state.gamma).toFixed(4);
    }
    state.channels.forEach(function (ch, c) {
      var def = meta.channels[c];
      if (ch.min !== def.min || ch.max !== def.max) {
        query += '&MINMAX=' + (c + 1) + ':' + ch.min + ',' + ch.max;
      }
    });
    return query + '&CTW=' + colourTwist(state);
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

  // ---- the map --------------------------------------------------------------------------

  function showImage(fif, meta) {
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
      var inside = p.x >= 0 && p.y >= 0 && p.x < meta.width && p.y < meta.height;
      byId('coords').textContent = inside ?
        'x ' + (p.x + 0.5).toFixed(1) + ', y ' + (meta.height - p.y + 0.5).toFixed(1) + ' (FITS pixels)' : '';
    });
    layer.addTo(map);
    map.fitBounds(bounds);
    viewer.map = map;
    viewer.layer = layer;
  }

  function redraw() {
    if (viewer.layer) {
      viewer.layer.setQuery(displayQuery(viewer.meta, viewer.state));
    }
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
    byId('gamma').value = String(state.gamma);
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

  function openImage(fif) {
    setStatus('Opening ' + fif + '… (the first look at a large file builds its reduced ' +
              'resolution levels: see the terminal)');
    var url = IIP + '?FIF=' + encodeFif(fif) + OBJECTS.map(function (o) {
      return '&obj=' + o;
    }).join('');
    return fetch(url).then(function (response) {
      return response.text().then(function (text) {
        if (!response.ok) {
          throw new Error(fif + ': ' + response.status + ' ' + text.slice(0, 200));
        }
        return text;
      });
    }).then(function (text) {
      var meta = parseMetadata(text);
      viewer.image = fif;
      viewer.meta = meta;
      viewer.state = defaultState(meta);
      viewer.tileErrors = 0;
      byId('info').textContent = describe(fif, meta);
      byId('image').value = fif;
      history.replaceState(null, '', '#fif=' + encodeFif(fif));
      buildChannelTable();
      syncControls();
      showImage(fif, meta);
    }).catch(function (err) {
      setStatus(String(err.message || err), true);
    });
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
    byId('gamma').addEventListener('change', function () {
      var value = parseFloat(byId('gamma').value);
      if (!(value > 0) || !isFinite(value)) {
        setStatus('Gamma must be a positive number', true);
        byId('gamma').value = String(viewer.state.gamma);
        return;
      }
      setStatus('');
      viewer.state.gamma = value;
      redraw();
    });
    byId('mode').addEventListener('change', function () {
      viewer.state.mode = byId('mode').value;
      syncControls();
      redraw();
    });
    byId('reset').addEventListener('click', function () {
      if (viewer.meta) {
        viewer.state = defaultState(viewer.meta);
        syncControls();
        redraw();
      }
    });
  }

  function start() {
    bindControls();
    fetch('images.json').then(function (response) {
      if (!response.ok) {
        throw new Error('images.json: ' + response.status);
      }
      return response.json();
    }).then(function (list) {
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
      var wanted = /(?:^#|&)fif=([^&]*)/.exec(location.hash);
      var fif = wanted ? decodeURIComponent(wanted[1]) : list.images[0].fif;
      var known = list.images.some(function (image) { return image.fif === fif; });
      openImage(known ? fif : list.images[0].fif);
    }).catch(function (err) {
      setStatus(String(err.message || err), true);
    });
  }

  viewer.parseMetadata = parseMetadata;
  viewer.displayQuery = displayQuery;
  viewer.openImage = openImage;

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
}());
