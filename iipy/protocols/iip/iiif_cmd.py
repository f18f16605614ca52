"""The IIIF command (docs/protocol.md §10.3): the IIIF Image API 3.0 or 2.1 on the IIP
endpoint, with the parsing, the region and size rules and the documents of
``protocols/iiif.py``.

* ``IIIF=<id>``: ``303 See Other`` to ``<service id>/info.json``.
* ``IIIF=<id>/info.json``: the image information, in the version of IIIF_VERSION
  unless the Accept header names the other one's context (then with
  ``Cache-Control: private``); maxWidth and maxHeight are MAX_CVT, maxArea MAX_CVT².
* ``IIIF=<id>/<region>/<size>/<rotation>/<quality>.<format>``: a request that is
  exactly one tile of the pyramid (``iiif.tile_of``) is answered by JTL's path, cache
  included; anything else by CVT's export path, reading the most reduced level that
  still has the output's resolution (``iiif.source_window``).  ``gray`` is COL=grey,
  ``bitonal`` COL=binary; the format is one of ``encode.FORMATS``.

The identifier is the image path, opened as FIF opens it.  The display modifiers
written before the command (MINMAX, CMP, GAM, CTW, CNT, INV, SHD, COL, QLT) apply;
the geometry ones (RGN, WID, HEI, ROT) are the IIIF request's own.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from iipy.imaging import encode
from iipy.imaging.store import OpenImage
from iipy.protocols import iiif
from iipy.protocols.iip.context import Context
from iipy.protocols.iip.export import export_filename, export_response
from iipy.protocols.iip.fif import open_path
from iipy.protocols.iip.parser import Command
from iipy.protocols.iip.tiles import tile_response

log = logging.getLogger(__name__)


def image_path(argument: str) -> str | None:
    """The identifier of an info.json or image request (None for anything else); no
    validation, so that it works whatever the version."""
    head, slash, last = argument.rpartition("/")
    if not slash:
        return None
    if last.partition("?")[0] == "info.json":
        return head or None
    parts = argument.rsplit("/", 4)
    return (parts[0] or None) if len(parts) == 5 else None


@functools.lru_cache(maxsize=4)
def extra_info(text: str) -> dict[str, Any] | None:
    """IIIF_EXTRA_INFO read once per value; a value that is not JSON is logged and
    left out."""
    fields = iiif.extra_info(text)
    if fields is None and text.strip():
        log.warning("IIIF_EXTRA_INFO is neither \"key\": value pairs nor a JSON object; "
                    "ignored: %.200s", text)
    return fields


def service_id(ctx: Context, cmd: Command) -> str:
    """The image service's identifier for this request (``iiif.service_id``)."""
    raw = iiif.raw_argument(ctx.request_string) or cmd.arg
    return iiif.service_id(ctx.params, raw, ctx.settings.base_url, ctx.mapped)


def info(ctx: Context, cmd: Command, image: OpenImage, version: int, accept: str) -> None:
    settings = ctx.settings
    limit = settings.max_cvt
    ident = service_id(ctx, cmd)
    options: dict[str, Any] = dict(formats=encode.FORMATS, upscaling=settings.allow_upscaling,
                                   copyright=settings.copyright,
                                   extra=extra_info(settings.iiif_extra_info))
    if version >= 3:
        body = iiif.info_json_v3(ident, image.grid, limit, limit, limit * limit, **options)
    else:
        body = iiif.info_json_v2(ident, image.grid, limit, limit, limit * limit, **options)
    private = "private" if version != settings.iiif_version else None
    ctx.output = ctx.responder.document(body, image.ref.mtime,
                                        iiif.info_content_type(version, accept), private)


def picture(ctx: Context, request: iiif.IIIFImageRequest, image: OpenImage) -> None:
    settings = ctx.settings
    grid = image.grid
    limit = settings.max_cvt
    plan = iiif.resolve(request, grid.width, grid.height, limit, limit, limit * limit,
                        settings.allow_upscaling)
    tile = iiif.tile_of(plan, grid)
    if tile is not None:
        ctx.output = tile_response(ctx, image, *tile)
        return
    level, source = iiif.source_window(plan, grid)
    view = ctx.view
    if plan.colour is not None:
        view = dataclasses.replace(view, colour=plan.colour)
    name = export_filename(request.identifier, "." + plan.format)
    ctx.output = export_response(ctx, image, "IIIF", level, source, (plan.out_w, plan.out_h),
                                 view, plan.rotation, plan.mirror, plan.format, 8, name)


def cmd_iiif(ctx: Context, cmd: Command) -> None:
    accept = ctx.params.get("HTTP_ACCEPT", "")
    ctx.read_accept = True
    version = iiif.negotiate_version(ctx.settings.iiif_version, accept)
    request = iiif.parse(cmd.arg, version, encode.FORMATS)
    if isinstance(request, iiif.IIIFRedirect):
        ctx.output = ctx.responder.redirect(iiif.redirect_location(service_id(ctx, cmd)))
        return
    image = open_path(ctx, request.identifier)
    if isinstance(request, iiif.IIIFInfoRequest):
        info(ctx, cmd, image, version, accept)
    else:
        picture(ctx, request, image)
