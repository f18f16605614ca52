"""Images: sources (FITS), paths under FILESYSTEM_PREFIX, the store of open images, the
shared pyramid, geometry, rendering kernels and encoders.  Knows nothing of HTTP or protocols."""
