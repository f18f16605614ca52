"""The IIP commands, executed strictly left to right (docs/protocol.md §3.3, §5).

Modifiers change the request's state; OBJ appends text lines; the first output command
produces the response and ends the request (iipsrv would go on and concatenate a second
HTTP response; no client sends two).  IIP errors are collected and, when the request
ends without output, replace the whole answer.  File and argument errors end the request
at once.  This module holds the command table; each group of commands has its module.

When the first output command is a path-like one (IIIF, DeepZoom, Zoomify) and other
commands come before it, the image its argument names is opened first, as if a FIF
had been written at the start: the modifiers before it that need an image (MINMAX)
then apply to it (docs/protocol.md §10).
"""

from __future__ import annotations

from typing import Callable

from iipy.errors import ImageUnavailable, MalformedRequest, UnsupportedCommand
from iipy.protocols.http import Response
from iipy.protocols.iip import (deepzoom_cmd, export, fif, iiif_cmd, modifiers, objects, tiles,
                                values, zoomify_cmd)
from iipy.protocols.iip.context import Context
from iipy.protocols.iip.parser import Command, IIPRequest

__all__ = ["Context", "HANDLERS", "run"]


def run(request: IIPRequest, ctx: Context) -> Response:
    """Execute the commands of ``request`` and return its response.  As in iipsrv, an
    image-not-set error (1 3) ends the request: later commands are not looked at."""
    open_protocol_image(request, ctx)
    for cmd in request.commands:
        ctx.command = cmd.name
        handler = HANDLERS.get(cmd.name)
        if handler is None:
            ctx.errors.append(UnsupportedCommand(cmd.raw_name))
            continue
        handler(ctx, cmd)
        if ctx.output is not None:
            return ctx.output
        if ctx.errors and isinstance(ctx.errors[-1], ImageUnavailable):
            break
    if ctx.errors:
        return ctx.responder.iip_error(ctx.errors)
    if ctx.lines or ctx.protocol_line:
        body = ("IIP:1.0" if ctx.protocol_line else "") + "\r\n" + \
            "".join(line + "\r\n" for line in ctx.lines)
        mtime = ctx.image.ref.mtime if ctx.image is not None else None
        return ctx.responder.obj_text(body.encode("utf-8", "surrogateescape"), mtime)
    return ctx.responder.iip_error([MalformedRequest(request.query)])


def open_protocol_image(request: IIPRequest, ctx: Context) -> None:
    """Open the image of a path-like output command before the commands run, when it is
    the request's first output command and does not come first."""
    for position, cmd in enumerate(request.commands):
        if cmd.name in OUTPUT_COMMANDS:
            find = IMAGE_PATHS.get(cmd.name)
            path = find(cmd.arg) if find is not None and position > 0 else None
            if path is not None:
                ctx.command = cmd.name
                fif.open_path(ctx, path)
            return


#: The commands that produce a whole answer (docs/protocol.md §3.3).
OUTPUT_COMMANDS = frozenset({"jtl", "jtls", "til", "cvt", "pfl", "spectra", "iiif", "deepzoom",
                             "zoomify"})

#: The path-like output commands: the image path in their argument (None if unparsable).
IMAGE_PATHS: dict[str, Callable[[str], str | None]] = {
    "iiif": iiif_cmd.image_path,
    "deepzoom": deepzoom_cmd.image_path,
    "zoomify": zoomify_cmd.image_path,
}


HANDLERS: dict[str, Callable[[Context, Command], None]] = {
    "fif": fif.cmd_fif,
    "obj": objects.cmd_obj,
    "qlt": modifiers.cmd_qlt,
    "minmax": modifiers.cmd_minmax,
    "cnt": modifiers.cmd_cnt,
    "gam": modifiers.cmd_gam,
    "cmp": modifiers.cmd_cmp,
    "inv": modifiers.cmd_inv,
    "ctw": modifiers.cmd_ctw,
    "wid": modifiers.cmd_wid,
    "hei": modifiers.cmd_hei,
    "rgn": modifiers.cmd_rgn,
    "rot": modifiers.cmd_rot,
    "sds": fif.cmd_sds,
    "lyr": modifiers.cmd_ignore,
    "icc": modifiers.cmd_ignore,
    "shd": modifiers.cmd_shd,
    "col": modifiers.cmd_col,
    "jtl": tiles.cmd_jtl,
    "jtls": tiles.cmd_jtls,
    "til": tiles.cmd_til,
    "cvt": export.cmd_cvt,
    "pfl": values.cmd_pfl,
    "spectra": values.cmd_spectra,
    "iiif": iiif_cmd.cmd_iiif,
    "deepzoom": deepzoom_cmd.cmd_deepzoom,
    "zoomify": zoomify_cmd.cmd_zoomify,
}
