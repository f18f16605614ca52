"""``iipy serve``: a local viewer for FITS files (catalogue, assets, HTTP front end)."""
