# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled FastCGI record layer of iipy.

Only ``iipy.server.fcgi`` calls this module.  It reads records and name-value pairs
exactly as flup 1.0.3's ``Record.read`` and ``decode_pair`` do (the contract tests in
tests/contract/test_fcgi_records.py hold them to flup byte for byte), without a Python
call per record field or per pair:

* :func:`next_record` finds the next whole record in a buffer;
* :func:`decode_params` decodes a complete FCGI_PARAMS stream into the dict the
  handler receives.

Where flup reads past the end of truncated data (slicing silently returns fewer
bytes) these functions raise ``ValueError`` instead: no web server sends such data.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeLatin1, PyUnicode_DecodeUTF8

#: Bytes of a record header.
DEF HEADER_LEN = 8


def next_record(bytes buf, Py_ssize_t pos):
    """The record starting at ``buf[pos]`` if the buffer holds all of it (padding
    included): ``(type, request_id, content, end)`` with ``end`` the offset just past
    its padding; else None.  The version byte is not checked (flup does not)."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(buf)
    cdef const unsigned char* p
    cdef Py_ssize_t length, end
    if pos < 0 or size - pos < HEADER_LEN:
        return None
    p = <const unsigned char*>PyBytes_AS_STRING(buf) + pos
    length = (p[4] << 8) | p[5]
    end = pos + HEADER_LEN + length + p[6]
    if end > size:
        return None
    if length == 0:
        content = b""
    else:
        content = PyBytes_FromStringAndSize(<const char*>p + HEADER_LEN, length)
    return p[1], (p[2] << 8) | p[3], content, end


cdef inline Py_ssize_t _length(const unsigned char* p, Py_ssize_t* pos, Py_ssize_t size) except -1:
    cdef Py_ssize_t i = pos[0]
    cdef Py_ssize_t n
    if i >= size:
        raise ValueError("truncated name-value pair")
    if p[i] & 0x80:
        if i + 4 > size:
            raise ValueError("truncated name-value pair")
        n = ((<Py_ssize_t>(p[i] & 0x7F) << 24) | (<Py_ssize_t>p[i + 1] << 16)
             | (<Py_ssize_t>p[i + 2] << 8) | p[i + 3])
        pos[0] = i + 4
    else:
        n = p[i]
        pos[0] = i + 1
    return n


def decode_params(bytes data):
    """The name-value pairs of a whole FCGI_PARAMS stream, as ``{name: value}``.

    Names are decoded as Latin-1; values as UTF-8 with surrogate escapes, so every
    byte round-trips (a raw UTF-8 path in QUERY_STRING reaches the file system
    unchanged).  A later pair replaces an earlier one of the same name.  Raises
    ValueError if the data ends inside a pair."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t name_len, value_len
    cdef dict out = {}
    while pos < size:
        name_len = _length(p, &pos, size)
        value_len = _length(p, &pos, size)
        if name_len > size - pos or value_len > size - pos - name_len:
            raise ValueError("truncated name-value pair")
        name = PyUnicode_DecodeLatin1(<const char*>p + pos, name_len, NULL)
        pos += name_len
        out[name] = PyUnicode_DecodeUTF8(<const char*>p + pos, value_len, "surrogateescape")
        pos += value_len
    return out
