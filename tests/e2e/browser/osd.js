// OpenSeadragon on one of iipy's path-like protocols, chosen by the page's query:
//   osd.html?proto=deepzoom&source=<URL of the .dzi>
//   osd.html?proto=zoomify&source=<URL of ImageProperties.xml>
//   osd.html?proto=iiif&source=<URL of info.json>
// DeepZoom and IIIF sources are OpenSeadragon's own; for Zoomify, whose descriptor
// OpenSeadragon does not read, the page reads ImageProperties.xml and gives its size.
// window.osd = {viewer, opened, failed} for the driver (osd-test.js).
'use strict';

(async function () {
  const params = new URLSearchParams(window.location.search);
  const proto = params.get('proto');
  const source = params.get('source');
  window.osd = { viewer: null, opened: false, failed: null };
  let tileSource = source;
  try {
    if (proto === 'zoomify') {
      const text = await (await fetch(source)).text();
      const attribute = (name) => Number(new RegExp(name + '="(\\d+)"').exec(text)[1]);
      tileSource = {
        type: 'zoomifytileservice',
        width: attribute('WIDTH'),
        height: attribute('HEIGHT'),
        tileSize: attribute('TILESIZE'),
        tilesUrl: source.replace(/ImageProperties\.xml$/, ''),
      };
    }
  } catch (error) {
    window.osd.failed = String(error);
    return;
  }
  const viewer = OpenSeadragon({
    id: 'viewer',
    tileSources: tileSource,
    drawer: 'canvas',
    showNavigationControl: false,
    animationTime: 0,
    blendTime: 0,
    immediateRender: true,
    minZoomImageRatio: 0.05,
  });
  window.osd.viewer = viewer;
  viewer.addHandler('open', () => { window.osd.opened = true; });
  viewer.addHandler('open-failed', (event) => { window.osd.failed = String(event.message); });
})();
