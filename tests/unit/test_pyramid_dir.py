"""The pyramid directory: a full file system never breaks a worker (preallocation, the
fallback to memory and to levels computed per request, nothing half-written read), the
directory stays within its bound (least recently used first, never a pyramid in use),
stale pyramids and leftovers are cleaned, and ``iipy cache`` shows and prunes it."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from iipy import cli
from iipy.imaging import pyramid as pyramid_module
from iipy.imaging import pyramid_dir
from iipy.imaging.geometry import Grid
from iipy.imaging.paths import resolve
from iipy.imaging.pyramid import Pyramid
from iipy.imaging.sources.fits import FitsImage
from iipy.settings import Settings
from tests.tmpfs import small_tmpfs
from tests.unit.test_pyramid import model_levels

REPO_ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20


@pytest.fixture(autouse=True)
def fresh_memory_budget(monkeypatch):
    """Each test starts with this process's memory budget unused and nothing logged."""
    monkeypatch.setattr(pyramid_module.memory, "used", 0)
    monkeypatch.setattr(pyramid_module, "_reported", pyramid_module.LRU(4096))


def write_image(root: Path, name: str, width: int, height: int, seed: int = 1) -> np.ndarray:
    data = np.random.default_rng(seed).normal(100, 5, (height, width)).astype(np.float32)
    data[10:14, 20:24] = np.nan
    fits.PrimaryHDU(data).writeto(root / name, overwrite=True)
    return data


def settings_for(root: Path, cache: Path, **env: str) -> Settings:
    return Settings.from_environ({"FILESYSTEM_PREFIX": str(root) + "/",
                                  "IIPY_CACHE_DIR": str(cache), **env})


def open_pyramid(settings: Settings, name: str) -> Pyramid:
    fi = FitsImage(resolve(name, settings))
    return Pyramid(fi, Grid(fi.width, fi.height, 256, 256), settings.cache_dir,
                   cache_max_mb=settings.cache_dir_max_mb, memory_mb=settings.pyramid_memory_mb)


def level_windows(p: Pyramid) -> list[np.ndarray]:
    """Every reduced level, read through ``window`` (as tiles are)."""
    out = []
    for k in range(1, p.grid.num_resolutions):
        w, h = p.grid.level_size(k)
        out.append(p.window(k, 0, 0, w, h))
    return out


def assert_matches_model(p: Pyramid, data: np.ndarray) -> None:
    for got, want in zip(level_windows(p), model_levels(data, p.grid.num_resolutions - 1)):
        np.testing.assert_allclose(got[0], want, rtol=1e-6, equal_nan=True)


def entries_by_image(cache: Path) -> dict[str, pyramid_dir.Entry]:
    return {Path(e.image).name: e for e in pyramid_dir.scan(str(cache)) if e.meta}


# --- a full file system ---------------------------------------------------------------


def test_full_file_system_falls_back_to_memory_logged_once(tmp_path, caplog):
    """2048x1536 float32 has 3.9 MB of levels: no room on a 2 MB tmpfs.  Preallocation
    fails before anything is mapped, nothing is left behind, every level is served from
    memory, and the move is logged once per image however often it is asked for."""
    data = write_image(tmp_path, "big.fits", 2048, 1536)
    with small_tmpfs(tmp_path / "fs", "2m") as fs:
        settings = settings_for(tmp_path, fs / "cache", IIPY_CACHE_DIR_MAX_MB="100")
        caplog.set_level(logging.WARNING, "iipy.imaging.pyramid")
        for _ in range(3):  # reopened, as the store does after a file is dropped
            p = open_pyramid(settings, "big.fits")
            assert_matches_model(p, data)
            assert not p.on_disk and not any(isinstance(lv, np.memmap) for lv in p.levels)
            p.window(2, 10, 10, 50, 50)
            p.close()
        assert os.listdir(fs / "cache") == [p._key() + ".lock"]  # no directory, no tmp file
        lines = [r.getMessage() for r in caplog.records if "not on disk" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "No space left on device" in lines[0] and "big.fits" in lines[0]


def test_disk_filling_between_levels_leaves_nothing(tmp_path, monkeypatch):
    """The first level's blocks can be reserved, the second's cannot: the half-made
    pyramid is removed at once and never read; once there is room it is built."""
    data = write_image(tmp_path, "img.fits", 1200, 1100)  # levels: 1.26 + 0.31 + 0.08 MB
    with small_tmpfs(tmp_path / "fs", "2m") as fs:
        settings = settings_for(tmp_path, fs / "cache", IIPY_CACHE_DIR_MAX_MB="100")
        (fs / "filler").write_bytes(b"\1" * (512 << 10))  # 1.5 MB left
        original = os.posix_fallocate
        calls = []

        def spy(fd, offset, length):
            calls.append(length)
            return original(fd, offset, length)

        monkeypatch.setattr(os, "posix_fallocate", spy)
        p = open_pyramid(settings, "img.fits")
        p.ensure()
        assert calls == [4 * 600 * 550, 4 * 300 * 275]  # level 1 reserved, level 2 not
        assert not p.on_disk
        assert os.listdir(fs / "cache") == [p._key() + ".lock"]
        assert_matches_model(p, data)
        p.close()
        os.unlink(fs / "filler")
        q = open_pyramid(settings, "img.fits")  # room now: built on disk, complete
        q.complete()
        assert q.on_disk
        assert sorted(os.listdir(fs / "cache" / q._key())) == [
            "level1.f32", "level2.f32", "level3.f32", "meta.json"]
        assert_matches_model(q, data)
        q.close()


def test_pyramid_with_short_level_file_is_never_read(tmp_path):
    """A pyramid whose meta.json is there but whose level file is short (written by a
    build that did not preallocate) is rebuilt, not mapped."""
    data = write_image(tmp_path, "img.fits", 1000, 900)
    settings = settings_for(tmp_path, tmp_path / "cache")
    p = open_pyramid(settings, "img.fits")
    p.complete()
    p.close()
    level1 = tmp_path / "cache" / p._key() / "level1.f32"
    with open(level1, "r+b") as f:
        f.truncate(1000)
    q = open_pyramid(settings, "img.fits")
    q.complete()
    assert q.on_disk and level1.stat().st_size == 4 * 500 * 450
    assert_matches_model(q, data)
    q.close()


def test_levels_beyond_the_memory_budget_are_computed_per_request(tmp_path, monkeypatch):
    """With no memory to spare only the smallest levels are kept; the others come from
    full resolution per request, in bands, bit for bit equal to the built levels."""
    data = write_image(tmp_path, "img.fits", 1100, 1000)
    on_disk = open_pyramid(settings_for(tmp_path, tmp_path / "cache"), "img.fits")
    want = [np.array(w) for w in level_windows(on_disk)]
    on_disk.close()
    monkeypatch.setattr(pyramid_module, "MIN_KEPT_BYTES", 4 * 300 * 300)
    monkeypatch.setattr(pyramid_module, "BAND_BYTES", 4 * 16 * 1100)  # several bands
    blocker = tmp_path / "file"
    blocker.write_text("x")
    settings = settings_for(tmp_path, blocker / "cache", IIPY_PYRAMID_MEMORY_MB="0")
    p = open_pyramid(settings, "img.fits")
    p.ensure()
    assert [lv is None for lv in p.levels] == [True, False, False]  # 550x500 not kept
    reads = []
    original = p.image.read

    def spy(channel, x, y, w, h, out=None):
        reads.append(h)
        return original(channel, x, y, w, h, out=out)

    original_binned = p.image.read_binned

    def spy_binned(channel, x, y, w, h, out=None):
        reads.append(h)
        return original_binned(channel, x, y, w, h, out=out)

    p.image.read = spy  # type: ignore[method-assign]
    p.image.read_binned = spy_binned  # type: ignore[method-assign]
    got = level_windows(p)
    assert len(reads) > 1 and max(reads) <= 2 * 16  # banded
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    tile = p.window(1, 256, 256, 256, 244)
    np.testing.assert_array_equal(tile, want[0][:, 256:500, 256:512])
    assert pyramid_module.memory.used == p._reserved > 0
    p.close()
    assert pyramid_module.memory.used == 0


def test_memory_budget_is_shared_by_the_workers_pyramids(tmp_path, monkeypatch):
    """IIPY_PYRAMID_MEMORY_MB bounds all in-memory pyramids of a process together: a
    second image gets what the first left; closing gives it back."""
    monkeypatch.setattr(pyramid_module, "MIN_KEPT_BYTES", 64 << 10)
    for name in ("a.fits", "b.fits"):
        write_image(tmp_path, name, 2048, 2048)  # levels: 4 + 1 + 0.25 MB
    blocker = tmp_path / "file"
    blocker.write_text("x")
    settings = settings_for(tmp_path, blocker / "cache", IIPY_PYRAMID_MEMORY_MB="6")
    a = open_pyramid(settings, "a.fits")
    a.ensure()
    assert [lv is None for lv in a.levels] == [False, False, False]
    b = open_pyramid(settings, "b.fits")
    b.ensure()
    assert [lv is None for lv in b.levels] == [True, True, False]  # 0.75 MB left
    assert pyramid_module.memory.used == (4 + 1 + 0.25) * MB + 0.25 * MB
    a.close()
    b.close()
    assert pyramid_module.memory.used == 0


# --- the bound, eviction, cleaning ----------------------------------------------------

HOLD_CODE = """
import sys
from iipy.imaging.geometry import Grid
from iipy.imaging.paths import resolve
from iipy.imaging.pyramid import Pyramid
from iipy.imaging.sources.fits import FitsImage
from iipy.settings import Settings
settings = Settings.from_environ({"FILESYSTEM_PREFIX": sys.argv[1], "IIPY_CACHE_DIR": sys.argv[2]})
fi = FitsImage(resolve(sys.argv[3], settings))
p = Pyramid(fi, Grid(fi.width, fi.height, 256, 256), settings.cache_dir)
p.ensure()
assert p.on_disk
print("open", flush=True)
sys.stdin.read()
p.close()
"""


class Holder:
    """Another process that has a pyramid open (as a worker has) until ``release``."""

    def __init__(self, root: Path, cache: Path, name: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD_CODE, str(root) + "/",
                                      str(cache), name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True)
        assert self.proc.stdout.readline() == "open\n"

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


def build_all(settings: Settings, names: list[str]) -> None:
    for name in names:
        p = open_pyramid(settings, name)
        p.complete()  # level 1 too, as ``iipy pyramid`` writes it
        assert p.on_disk and p.levels[0] is not None, p.not_on_disk
        p.close()


def set_last_use(cache: Path, by_name: dict[str, float]) -> None:
    entries = entries_by_image(cache)
    for name, t in by_name.items():
        os.utime(pyramid_dir.lock_path(str(cache), entries[name].key), (t, t))


def test_eviction_is_least_recently_used_and_spares_the_pyramid_in_use(tmp_path):
    names = ["a.fits", "b.fits", "c.fits", "d.fits"]
    for i, name in enumerate(names):
        write_image(tmp_path, name, 800, 700, seed=i)
    cache = tmp_path / "cache"
    settings = settings_for(tmp_path, cache)
    build_all(settings, names)
    holder = Holder(tmp_path, cache, "b.fits")
    try:
        now = time.time()
        set_last_use(cache, {"b.fits": now - 400, "c.fits": now - 300, "a.fits": now - 200,
                             "d.fits": now - 100})
        entries = entries_by_image(cache)
        total = sum(e.bytes for e in entries.values())
        # enough to remove one: b is the oldest but open in another process, so c goes
        removed = pyramid_dir.clean(str(cache), total - entries["c.fits"].bytes)
        assert [(Path(r.image).name, r.reason) for r in removed] == [
            ("c.fits", "least recently used")]
        assert not (cache / entries["c.fits"].key).exists()
        assert not Path(pyramid_dir.lock_path(str(cache), entries["c.fits"].key)).exists()
        # down to nothing: a, then d; b stays while it is in use
        removed = pyramid_dir.clean(str(cache), 0)
        assert [Path(r.image).name for r in removed] == ["a.fits", "d.fits"]
        assert list(entries_by_image(cache)) == ["b.fits"]
        assert (cache / entries["b.fits"].key / "meta.json").exists()
    finally:
        holder.release()
    assert [Path(r.image).name for r in pyramid_dir.clean(str(cache), 0)] == ["b.fits"]
    assert os.listdir(cache) == []


def test_builder_keeps_the_directory_within_its_bound(tmp_path):
    """With IIPY_CACHE_DIR_MAX_MB=1 and pyramids of about 0.4 MB, each build evicts the
    least recently used ones: the directory never holds more than 1 MB."""
    names = ["p%d.fits" % i for i in range(5)]
    for i, name in enumerate(names):
        write_image(tmp_path, name, 600, 500, seed=i)  # 300x250 + 150x125 float32, meta.json
    cache = tmp_path / "cache"
    settings = settings_for(tmp_path, cache, IIPY_CACHE_DIR_MAX_MB="1")
    for i, name in enumerate(names):
        build_all(settings, [name])
        set_last_use(cache, {name: time.time() - 1000 + i})  # built in this order
        assert sum(e.bytes for e in pyramid_dir.scan(str(cache))) <= MB
    assert sorted(entries_by_image(cache)) == ["p3.fits", "p4.fits"]


def test_pyramid_larger_than_the_bound_is_kept_in_memory(tmp_path, caplog):
    data = write_image(tmp_path, "big.fits", 2048, 1536)  # 3.9 MB of levels
    cache = tmp_path / "cache"
    settings = settings_for(tmp_path, cache, IIPY_CACHE_DIR_MAX_MB="2")
    caplog.set_level(logging.WARNING, "iipy.imaging.pyramid")
    p = open_pyramid(settings, "big.fits")
    assert_matches_model(p, data)
    assert not p.on_disk and not (cache / p._key()).exists()
    assert "exceed the bound" in caplog.text
    p.close()


def test_stale_pyramids_and_leftovers_are_cleaned(tmp_path):
    """Pyramids of changed or removed images go; so do leftovers of builds that died,
    once older than the grace period; a young lock file and foreign files stay."""
    for i, name in enumerate(["keep.fits", "changed.fits", "removed.fits"]):
        write_image(tmp_path, name, 600, 500, seed=i)
    cache = tmp_path / "cache"
    settings = settings_for(tmp_path, cache)
    build_all(settings, ["keep.fits", "changed.fits", "removed.fits"])
    keys = {name: e.key for name, e in entries_by_image(cache).items()}
    write_image(tmp_path, "changed.fits", 600, 500, seed=9)
    os.utime(tmp_path / "changed.fits", ns=(0, 10**18))
    os.unlink(tmp_path / "removed.fits")
    old = time.time() - 2 * pyramid_dir.GRACE_SECONDS
    orphan_lock = cache / ("a" * 32 + ".lock")  # a build that died before its directory
    orphan_lock.touch()
    os.utime(orphan_lock, (old, old))
    young_lock = cache / ("b" * 32 + ".lock")  # may be a build starting now
    young_lock.touch()
    dead_build = cache / ("c" * 32)  # a build that died before meta.json
    dead_build.mkdir()
    (dead_build / "level1.f32.tmp4242").write_bytes(b"\0" * 5000)
    os.utime(dead_build / "level1.f32.tmp4242", (old, old))
    os.utime(dead_build, (old, old))
    young_build = cache / ("d" * 32)  # a build that is writing now (or just died)
    young_build.mkdir()
    (young_build / "level1.f32.tmp4243").write_bytes(b"\0" * 5000)
    foreign = cache / "README"  # not ours: never touched
    foreign.write_text("x")
    removed = pyramid_dir.clean(str(cache), 1 << 40)
    assert sorted((r.key, r.reason) for r in removed) == sorted([
        ("a" * 32, "lock file without a pyramid"),
        ("c" * 32, "incomplete build"),
        (keys["changed.fits"], "image changed"),
        (keys["removed.fits"], "image removed"),
    ])
    keep = keys["keep.fits"]
    assert sorted(os.listdir(cache)) == sorted(
        ["README", "b" * 32 + ".lock", "d" * 32, keep, keep + ".lock"])
    # the new version of the changed file gets its own pyramid
    p = open_pyramid(settings, "changed.fits")
    p.ensure()
    assert p.on_disk and p._key() != keys["changed.fits"]
    p.close()


def test_stale_pyramid_in_use_is_kept(tmp_path):
    """A worker still serving the old version of a changed file keeps its pyramid."""
    write_image(tmp_path, "img.fits", 600, 500)
    cache = tmp_path / "cache"
    build_all(settings_for(tmp_path, cache), ["img.fits"])
    holder = Holder(tmp_path, cache, "img.fits")
    try:
        write_image(tmp_path, "img.fits", 600, 500, seed=3)
        os.utime(tmp_path / "img.fits", ns=(0, 10**18))
        assert pyramid_dir.clean(str(cache), 0) == []
        (entry,) = pyramid_dir.scan(str(cache))
        assert entry.stale(time.time()) == "image changed" and pyramid_dir.in_use(entry)
    finally:
        holder.release()
    assert [r.reason for r in pyramid_dir.clean(str(cache), 1 << 40)] == ["image changed"]


# --- iipy cache ------------------------------------------------------------------------


def test_iipy_cache_lists_and_prunes(tmp_path, monkeypatch, capsys):
    for i, name in enumerate(["a.fits", "b.fits", "c.fits"]):
        write_image(tmp_path, name, 1000, 900, seed=i)  # about 1.15 MB of levels each
    cache = tmp_path / "cache"
    settings = settings_for(tmp_path, cache)
    build_all(settings, ["a.fits", "b.fits", "c.fits"])
    now = time.time()
    set_last_use(cache, {"a.fits": now - 300, "c.fits": now - 200})
    b = open_pyramid(settings, "b.fits")  # open here: in use, and used now
    b.ensure()
    keys = {name: e.key for name, e in entries_by_image(cache).items()}
    write_image(tmp_path, "c.fits", 1000, 900, seed=7)
    os.utime(tmp_path / "c.fits", ns=(0, 10**18))
    orphan = cache / ("e" * 32 + ".lock")
    orphan.touch()
    os.utime(orphan, (now - 4000, now - 4000))
    monkeypatch.setenv("IIPY_CACHE_DIR", str(cache))
    monkeypatch.delenv("IIPY_CACHE_DIR_MAX_MB", raising=False)
    try:
        assert cli.main(["cache", "--max-mb", "2"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "Directory: %s" % cache
        size = sum(e.bytes for e in pyramid_dir.scan(str(cache)))
        assert lines[1] == "Size: %.1f MB in 3 pyramid(s); bound 2.0 MB (IIPY_CACHE_DIR_MAX_MB=2)" % (
            size / MB)
        assert lines[2].split() == ["SIZE", "LAST", "USE", "STATE", "IMAGE"]
        row = re.compile(r"\s*(\d+\.\d MB)  (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)  (.+?)\s*  (\S+)")
        rows = [row.fullmatch(line).groups() for line in lines[3:]]  # most recent first
        assert [(r[2], r[3]) for r in rows] == [
            ("in use", str(tmp_path / "b.fits")),
            ("image changed", str(tmp_path / "c.fits")),
            ("complete", str(tmp_path / "a.fits")),
            ("lock file without a pyramid", "-")]
        assert [r[0] for r in rows] == ["1.1 MB", "1.1 MB", "1.1 MB", "0.0 MB"]
        assert [r[1] for r in rows[1:]] == [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
                                            for t in (now - 200, now - 300, now - 4000)]
        # prune: the stale entries go, then a (least recently used); b is in use
        assert cli.main(["cache", "--prune", "--max-mb", "2"]) == 0
        out = capsys.readouterr().out.splitlines()
        removed = [line for line in out if line.startswith("removed ")]
        assert sorted(removed) == sorted([
            "removed %s (image changed, 1.1 MB): %s" % (keys["c.fits"], tmp_path / "c.fits"),
            "removed %s (lock file without a pyramid, 0.0 MB): -" % ("e" * 32),
            "removed %s (least recently used, 1.1 MB): %s" % (keys["a.fits"], tmp_path / "a.fits"),
        ])
        assert removed[-1].startswith("removed %s (least recently used" % keys["a.fits"])
        assert "1 pyramid(s)" in out[len(removed) + 1]
        assert sorted(os.listdir(cache)) == sorted([keys["b.fits"], keys["b.fits"] + ".lock"])
    finally:
        b.close()
    assert cli.main(["cache", "--prune", "--max-mb", "1"]) == 0
    assert "(least recently used, 1.1 MB): %s" % (tmp_path / "b.fits") in capsys.readouterr().out
    assert os.listdir(cache) == []


def test_iipy_pyramid_says_when_the_levels_cannot_be_on_disk(tmp_path, monkeypatch, capsys):
    write_image(tmp_path, "a.fits", 1000, 900)
    monkeypatch.setenv("IIPY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("IIPY_CACHE_DIR_MAX_MB", "1")  # 1.15 MB of levels do not fit
    assert cli.main(["pyramid", str(tmp_path / "a.fits")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "a.fits: not written to %s: its 1.1 MB exceed the bound" % (tmp_path / "cache") in err


def test_read_only_directory_still_serves_its_pyramids(tmp_path):
    """Pyramids in a directory that became read-only are read (shared lock on a
    read-only descriptor); a new image there is kept in memory."""
    data = write_image(tmp_path, "a.fits", 600, 500)
    write_image(tmp_path, "b.fits", 600, 500, seed=2)
    with small_tmpfs(tmp_path / "fs", "2m") as fs:
        settings = settings_for(tmp_path, fs / "cache", IIPY_CACHE_DIR_MAX_MB="100")
        build_all(settings, ["a.fits"])
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        p = open_pyramid(settings, "a.fits")
        p.ensure()
        assert p.on_disk and isinstance(p.levels[0], np.memmap), p.not_on_disk
        assert_matches_model(p, data)
        q = open_pyramid(settings, "b.fits")
        q.ensure()
        assert not q.on_disk and "Read-only file system" in q.not_on_disk
        p.close()
        q.close()
