"""Image sources: one module per file format, each the only importer of its library."""
