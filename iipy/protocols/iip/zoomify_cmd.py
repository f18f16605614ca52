"""The Zoomify command (docs/protocol.md §10.1): ``Zoomify=<image>/ImageProperties.xml``
answers the descriptor, ``Zoomify=<image>/TileGroup<g>/<z>-<x>-<y>.jpg`` the JTL tile
of that level, with JTL's headers, cache, 304 and modifiers (``protocols/zoomify.py``
parses and maps)."""

from __future__ import annotations

from iipy.protocols import zoomify
from iipy.protocols.iip.context import Context
from iipy.protocols.iip.fif import open_path
from iipy.protocols.iip.parser import Command
from iipy.protocols.iip.tiles import send_tile

#: Content-Type of the descriptor (iipsrv 1.1's).
DESCRIPTOR_TYPE = "application/xml"


def image_path(argument: str) -> str | None:
    """The image a Zoomify argument names (None when it cannot be parsed)."""
    try:
        return zoomify.parse(argument).image
    except zoomify.ZoomifyError:
        return None


def cmd_zoomify(ctx: Context, cmd: Command) -> None:
    request = zoomify.parse(cmd.arg)
    image = open_path(ctx, request.image)
    if isinstance(request, zoomify.ZoomifyDescriptor):
        ctx.output = ctx.responder.document(zoomify.descriptor(image.grid), image.ref.mtime,
                                            DESCRIPTOR_TYPE)
        return
    send_tile(ctx, *zoomify.tile(request, image.grid))
