"""The compiled FastCGI record layer (iipy._fcgi) against flup 1.0.3, the reference.

``next_record`` must cut out of a buffer the very records flup's ``Record.read``
reads from a socket, and ``decode_params`` must give the pairs flup's
``decode_pair`` gives, for every record type, padding length, 1- and 4-byte
lengths; the Python twins used without the extension are held to the same
contract.  The connection tests run the whole layer (PARAMS split across records,
kept-alive and multiplexing requests, aborts) over a socket pair.
"""

from __future__ import annotations

import random
import struct

import pytest
from flup.server import fcgi_base as flup

from iipy.server import fcgi
from tests import fcgiclient as fc
from tests.contract.test_flup import END_REQUEST_COMPLETE, _Chunks, _echo, _serve_pair

try:
    from iipy import _fcgi
except ImportError:  # pragma: no cover - CI builds the extension
    _fcgi = None

IMPLEMENTATIONS = [
    pytest.param((fcgi._py_next_record, fcgi._py_decode_params), id="python"),
    pytest.param((_fcgi.next_record, _fcgi.decode_params) if _fcgi else None, id="compiled",
                 marks=pytest.mark.skipif(_fcgi is None, reason="iipy._fcgi not built")),
]


def test_the_compiled_layer_is_the_one_in_use():
    assert _fcgi is not None, "build it: python setup.py build_ext --inplace"
    assert fcgi.next_record is _fcgi.next_record and fcgi.decode_params is _fcgi.decode_params


def _raw_record(rec_type: int, request_id: int, content: bytes, padding: int, version=1) -> bytes:
    """A record with any padding length (web servers pad to 8; the format allows 0-255)."""
    return (struct.pack("!BBHHBx", version, rec_type, request_id, len(content), padding)
            + content + bytes(range(padding)))


def _flup_records(data: bytes) -> list[tuple[int, int, bytes]]:
    source = _Chunks(data, step=4093)
    out = []
    while source.data:
        rec = flup.Record()
        rec.read(source)
        out.append((rec.type, rec.requestId, rec.contentData))
    return out


def _stream_of_every_kind(largest: bool = True) -> bytes:
    """Records of every type, with content lengths up to the largest (on two types)."""
    rng = random.Random(13)
    parts = []
    for rec_type in list(range(1, 12)) + [42, 255]:
        big = (65535,) if largest and rec_type in (fc.STDIN, 255) else ()
        for length in (0, 1, 7, 8, 9, 255) + big:
            padding = rng.choice((0, -length & 7, 1, 255))
            request_id = rng.choice((0, 1, 2, 65535))
            content = bytes(rng.randrange(256) for _ in range(length))
            parts.append(_raw_record(rec_type, request_id, content, padding,
                                     version=rng.choice((1, 1, 0, 9))))
    return b"".join(parts)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_next_record_cuts_out_flups_records(impl):
    next_record, _ = impl
    data = _stream_of_every_kind()
    ours, pos = [], 0
    while pos < len(data):
        rec_type, request_id, content, pos = next_record(data, pos)
        ours.append((rec_type, request_id, content))
    assert pos == len(data)
    assert ours == _flup_records(data)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_next_record_waits_for_the_whole_record_padding_included(impl):
    next_record, _ = impl
    data = _raw_record(fc.PARAMS, 3, b"abcdefghijk", 5) + b"\x01"
    whole = len(data) - 1
    for cut in range(whole):
        assert next_record(data[:cut], 0) is None
        assert next_record(b"xx" + data[:cut], 2) is None
    assert next_record(data, 0) == (fc.PARAMS, 3, b"abcdefghijk", whole)
    assert next_record(b"xx" + data, 2) == (fc.PARAMS, 3, b"abcdefghijk", whole + 2)
    assert next_record(data, whole) is None


def _pair(name: bytes, value: bytes, long_name=False, long_value=False) -> bytes:
    def length(n, long):
        return struct.pack("!I", n | 0x80000000) if long or n > 127 else bytes([n])
    return length(len(name), long_name) + length(len(value), long_value) + name + value


def _flup_params(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        pos, (name, value) = flup.decode_pair(data, pos)
        out[name.decode("latin-1")] = value.decode("utf-8", "surrogateescape")
    return out


PAIRS = [
    (b"QUERY_STRING", b"FIF=/data/sky.fits&JTL=3,17", False, False),
    (b"EMPTY", b"", False, False),
    (b"", b"nameless", False, False),
    (b"N" * 127, b"v" * 127, False, False),       # longest 1-byte lengths
    (b"N" * 128, b"v" * 128, False, False),       # shortest 4-byte lengths
    (b"SHORT_AS_LONG", b"x", True, True),         # small lengths in the 4-byte form
    (b"BIG", bytes(range(256)) * 300, False, False),
    (b"PATH_INFO", "/données/ciel.fits".encode(), False, False),
    (b"RAW", b"\xff\xfe\x80 not utf-8", False, False),
    (b"LATIN\xe9", b"name byte above 127", False, False),
    (b"EMPTY", b"replaced", False, False),        # a later pair wins
]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_decode_params_gives_flups_pairs(impl):
    _, decode_params = impl
    data = b"".join(_pair(*p) for p in PAIRS)
    ours = decode_params(data)
    assert ours == _flup_params(data)
    assert list(ours.items()) == list(_flup_params(data).items())
    assert ours["RAW"].encode("utf-8", "surrogateescape") == b"\xff\xfe\x80 not utf-8"
    assert ours["EMPTY"] == "replaced" and ours[""] == "nameless"
    assert decode_params(b"") == {}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_decode_params_refuses_a_truncated_pair(impl):
    _, decode_params = impl
    data = _pair(b"NAME", b"v" * 200) + _pair(b"N" * 130, b"value")
    boundaries = {0, len(_pair(b"NAME", b"v" * 200)), len(data)}
    for cut in range(len(data) + 1):
        if cut in boundaries:
            assert len(decode_params(data[:cut])) == sorted(boundaries).index(cut)
        else:
            with pytest.raises(ValueError):
                decode_params(data[:cut])


def test_decode_params_takes_lengths_of_up_to_31_bits_without_allocating():
    huge = b"\x7f\xff\xff\xff" + b"\x01" + b"x"  # a name of 2**31 - 1 bytes announced
    with pytest.raises(ValueError):
        _fcgi.decode_params(huge)


# ---- the whole layer over a socket pair -----------------------------------------------------


def _reader_over(data: bytes, step: int) -> fcgi._RecordReader:
    reader = fcgi._RecordReader(_Chunks(data, step))  # type: ignore[arg-type]
    return reader


@pytest.mark.parametrize("step", [1, 3, 8, 65536])
def test_record_reader_reassembles_records_from_any_reads(step):
    data = _stream_of_every_kind(largest=step > 8)
    reader = _reader_over(data, step)
    ours = []
    while reader._sock.data or reader.buffered:
        rec = reader.read()
        ours.append((rec.type, rec.requestId, rec.contentData))
        assert rec.contentLength == len(rec.contentData)
    assert ours == _flup_records(data)
    with pytest.raises(EOFError):
        reader.read()


def test_record_reader_eof_inside_a_record_is_eoferror():
    reader = _reader_over(fc.record(fc.STDIN, 1, b"abcdef")[:10], 4)
    with pytest.raises(EOFError):
        reader.read()


@pytest.mark.parametrize("chunk", [1, 7, 8, 1000, 65535])
def test_params_split_across_records_anywhere(chunk):
    seen = []

    def handler(params):
        seen.append(params)
        return b"Content-Type: text/plain\r\n\r\nok"

    params = {"QUERY_STRING": "FIF=a.fits&JTL=0,0", "LONG": "é" * 200, "": "x",
              "BIG": "v" * 3000}  # (one write into the socket pair: stays small)
    encoded = fc.encode_params(params)
    data = (fc.begin_request(1, keep_conn=True) + fc.stream(fc.PARAMS, 1, encoded, chunk=chunk)
            + fc.stream(fc.STDIN, 1, b""))
    out, ctx = _serve_pair(handler, data)
    assert seen == [_flup_params(encoded)] == [params]
    assert out == (fc.record(fc.STDOUT, 1, b"Content-Type: text/plain\r\n\r\nok")
                   + fc.record(fc.STDOUT, 1) + END_REQUEST_COMPLETE)


def test_kept_alive_multiplexing_and_aborted_requests_exact_bytes():
    """Request 1 runs; a BEGIN_REQUEST for id 2 while id 3 is still receiving its
    parameters is refused (FCGI_CANT_MPX_CONN, flup's rule); id 3 is aborted; id 4
    runs, with 9-byte padding on its records; every answer's bytes are checked."""
    seen: list[str] = []
    data = (fc.request_bytes({"QUERY_STRING": "one"}, keep_conn=True, request_id=1)
            + fc.begin_request(3, keep_conn=True) + fc.record(fc.PARAMS, 3, fc.encode_params(
                {"QUERY_STRING": "three"}))
            + fc.begin_request(2, keep_conn=True)
            + fc.record(fc.ABORT_REQUEST, 3)
            + _raw_record(fc.BEGIN_REQUEST, 4, struct.pack("!HB5x", 1, 1), 9)
            + _raw_record(fc.PARAMS, 4, fc.encode_params({"QUERY_STRING": "four"}), 9)
            + _raw_record(fc.PARAMS, 4, b"", 9) + _raw_record(fc.STDIN, 4, b"", 9))
    out, ctx = _serve_pair(_echo(seen), data)
    answer = b"Content-Type: text/plain\r\n\r\n"
    cant_mpx = struct.pack("!IB3x", 0, flup.FCGI_CANT_MPX_CONN)
    assert out == (fc.record(fc.STDOUT, 1, answer + b"one") + fc.record(fc.STDOUT, 1)
                   + fc.record(fc.END_REQUEST, 1, bytes(8))
                   + fc.record(fc.END_REQUEST, 2, cant_mpx)
                   + fc.record(fc.END_REQUEST, 3, bytes(8))
                   + fc.record(fc.STDOUT, 4, answer + b"four") + fc.record(fc.STDOUT, 4)
                   + fc.record(fc.END_REQUEST, 4, bytes(8)))
    assert seen == ["one", "four"] and ctx.abandoned == 1


def test_truncated_params_close_the_connection(caplog):
    data = (fc.begin_request(1) + fc.record(fc.PARAMS, 1, _pair(b"NAME", b"value")[:-2])
            + fc.record(fc.PARAMS, 1) + fc.stream(fc.STDIN, 1, b""))
    out, ctx = _serve_pair(lambda p: b"unused", data)
    assert out == b"" and ctx.requests == 0
    assert "invalid FastCGI data" in caplog.text
