"""Processes and transport: the pre-fork supervisor, listening sockets, FastCGI records and
logging set-up.  Knows nothing of images or protocols."""
