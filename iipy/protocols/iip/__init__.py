"""The IIP protocol: the request parser and one module per group of commands."""
