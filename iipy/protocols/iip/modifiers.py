"""The modifiers: commands that only change the request's state (docs/protocol.md §5.7
to §5.21): QLT, MINMAX, CNT, GAM, CMP, INV, CTW, WID, HEI, RGN, ROT, SHD, COL, LYR, ICC."""

from __future__ import annotations

import logging

from iipy.imaging import kernels
from iipy.protocols.iip import parser
from iipy.protocols.iip.context import Context
from iipy.protocols.iip.parser import Command
from iipy.protocols.iip.stretch import parse_contrast, parse_stretch
from iipy.settings import atoi

log = logging.getLogger(__name__)

def cmd_qlt(ctx: Context, cmd: Command) -> None:
    q = atoi(cmd.arg)
    if not 0 <= q <= 100:
        log.info("QLT %d out of range, clamped", q)
    ctx.view.quality = min(100, max(0, q))


def cmd_minmax(ctx: Context, cmd: Command) -> None:
    image = ctx.require_image("")
    if image is None:
        return
    parsed = parser.minmax(cmd.arg)
    if parsed is None:
        return
    channel, lo, hi = parsed
    if 0 <= channel < image.source.channels:
        ctx.view.minmax[channel] = (lo, hi)


def cmd_cnt(ctx: Context, cmd: Command) -> None:
    """CNT (§5.13): a contrast factor, or iipsrv 1.2's ``eq`` (equalisation, the factor
    kept) and ``st`` (the range narrowed to the histogram, factor 1); a later number ends
    ``st``, not ``eq``."""
    value = parse_contrast(cmd.arg)
    view = ctx.view
    if not isinstance(value, str):
        view.contrast, view.autostretch = value, False
    elif value == "eq":
        view.equalize = True
    else:  # "st"
        view.contrast, view.autostretch = 1.0, True


def cmd_gam(ctx: Context, cmd: Command) -> None:
    """GAM (§5.14): a power, or ``log``, ``asinh[:BETA]``, ``sqrt``; 1 is no stretch."""
    parsed = parse_stretch(cmd.arg)
    ctx.view.stretch, ctx.view.gamma = (kernels.STRETCH_POWER, 1.0) if parsed is None else parsed


def cmd_cmp(ctx: Context, cmd: Command) -> None:
    ctx.view.cmap = kernels.cmap_code(cmd.arg)


def cmd_inv(ctx: Context, cmd: Command) -> None:
    ctx.view.invert = True


def cmd_ctw(ctx: Context, cmd: Command) -> None:
    ctx.view.ctw.extend(parser.ctw(cmd.arg))


def cmd_wid(ctx: Context, cmd: Command) -> None:
    ctx.width = parser.c_int(cmd.arg)  # a C int: huge values wrap, as in iipsrv


def cmd_hei(ctx: Context, cmd: Command) -> None:
    ctx.height = parser.c_int(cmd.arg)


def cmd_rgn(ctx: Context, cmd: Command) -> None:
    region = parser.rgn(cmd.arg)
    if region is not None:
        ctx.region = region


def cmd_rot(ctx: Context, cmd: Command) -> None:
    ctx.rotation, ctx.mirror = parser.rot(cmd.arg)


def cmd_shd(ctx: Context, cmd: Command) -> None:
    parsed = parser.shd(cmd.arg)
    if parsed is not None:
        ctx.view.shade = parsed


def cmd_col(ctx: Context, cmd: Command) -> None:
    ctx.view.colour = parser.col(cmd.arg)


def cmd_ignore(ctx: Context, cmd: Command) -> None:
    """LYR (JPEG2000 quality layers) and ICC (a no-op in iipsrv): accepted, no effect."""
