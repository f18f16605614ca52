"""iipy: an IIP image server for FITS files, a drop-in replacement for iipsrv."""

__version__ = "0.1.0"
