"""iipy: an image server for FITS and pyramidal TIFF files (IIP, IIIF, DeepZoom, Zoomify), a
drop-in replacement for iipsrv.

``iipy.show(path, ...)`` shows a FITS file in a Jupyter notebook (``iipy.viewer.notebook``);
it is imported on first use, so that ``import iipy`` stays cheap.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "show":
        from iipy.viewer.notebook import show

        return show
    raise AttributeError("module 'iipy' has no attribute %r" % name)
