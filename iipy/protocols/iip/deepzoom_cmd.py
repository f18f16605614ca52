"""The DeepZoom command (docs/protocol.md §10.2): ``DeepZoom=<image>.dzi`` answers the
descriptor, ``DeepZoom=<image>_files/<L>/<x>_<y>.jpg`` the JTL tile of that level, with
JTL's headers, cache, 304 and modifiers (``protocols/deepzoom.py`` parses and maps)."""

from __future__ import annotations

from iipy.protocols import deepzoom
from iipy.protocols.iip.context import Context
from iipy.protocols.iip.fif import open_path
from iipy.protocols.iip.parser import Command
from iipy.protocols.iip.tiles import send_tile

#: Content-Type of the descriptor (iipsrv 1.1's).
DESCRIPTOR_TYPE = "application/xml"


def image_path(argument: str) -> str | None:
    """The image a DeepZoom argument names (None when it cannot be parsed)."""
    try:
        return deepzoom.parse(argument).image
    except deepzoom.DeepZoomError:
        return None


def cmd_deepzoom(ctx: Context, cmd: Command) -> None:
    request = deepzoom.parse(cmd.arg)
    image = open_path(ctx, request.image)
    if isinstance(request, deepzoom.DeepZoomDescriptor):
        ctx.output = ctx.responder.document(deepzoom.descriptor(image.grid), image.ref.mtime,
                                            DESCRIPTOR_TYPE)
        return
    send_tile(ctx, *deepzoom.tile(request, image.grid))
