"""Requests to responses: the IIP commands (``iip/``), the HTTP response and error table
(``http``) and the router that picks the protocol (``router``).  Calls ``iipy.imaging``."""
