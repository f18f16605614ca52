# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled pixel loops of iipy.

Only ``iipy.kernels`` calls this module: it validates arguments, converts what memoryviews cannot
take, allocates the outputs and scratch buffers, and holds the NumPy twin of each function (the
specification these loops are tested against). Arguments here are trusted apart from a few cheap
shape checks that protect memory.

All pixel arithmetic of ``render`` is float32 with the twins' operations, so that without the
gamma table the 8-bit results are identical to theirs. Hot loops are Cython in ``with nogil``
blocks; the few that a compiler targeting baseline x86-64 (SSE2) cannot vectorise well (table
gathers, clamps with NaN semantics, RGB interleaving) are small C functions in ``cdef extern``
blocks below, with SSE2 intrinsics on x86 and a portable loop elsewhere.
"""

from libc.math cimport powf, fabsf
from libc.float cimport FLT_MAX
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free
from libc.stdint cimport (uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t,
                          int64_t)

# Every sample type astropy hands out: the FITS BITPIX types and, for data it has already
# shifted by BZERO (tile-compressed HDUs), their unsigned or signed counterparts.
ctypedef fused pix_t:
    uint8_t
    int8_t
    uint16_t
    int16_t
    uint32_t
    int32_t
    uint64_t
    int64_t
    float
    double

# Colormap codes, as in iipy.kernels.
cdef enum:
    CM_NONE = 0
    CM_HOT = 1
    CM_COLD = 2
    CM_JET = 3
    CM_RED = 4
    CM_GREEN = 5
    CM_BLUE = 6

# ----------------------------------------------------------------------------------------------
# to_float32
# ----------------------------------------------------------------------------------------------

# Byte reversal of contiguous 4- and 8-byte samples. Compilers targeting plain SSE2 do not
# vectorise it, so on x86 it is written with SSE2 intrinsics (exchange the 16-bit words of each
# sample, then the two bytes of each word); a portable loop handles the rest.
cdef extern from *:
    """
    #include <float.h>
    #include <math.h>
    #include <string.h>
    #if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
    #include <emmintrin.h>
    #define IIPY_SSE2 1
    #else
    #define IIPY_SSE2 0
    #endif

    /* d[k] = s[k] with the bytes of each sample reversed; n samples of 4 (or 8) bytes */
    static void iipy_swap4_row(const unsigned char *s, Py_ssize_t n, unsigned char *d)
    {
        Py_ssize_t j = 0;
    #if IIPY_SSE2
        for (; j + 4 <= n; j += 4) {
            __m128i x = _mm_loadu_si128((const __m128i *)(s + 4 * j));
            x = _mm_shufflehi_epi16(_mm_shufflelo_epi16(x, 0xb1), 0xb1);
            x = _mm_or_si128(_mm_slli_epi16(x, 8), _mm_srli_epi16(x, 8));
            _mm_storeu_si128((__m128i *)(d + 4 * j), x);
        }
    #endif
        for (; j < n; j++) {
            d[4 * j] = s[4 * j + 3];
            d[4 * j + 1] = s[4 * j + 2];
            d[4 * j + 2] = s[4 * j + 1];
            d[4 * j + 3] = s[4 * j];
        }
    }

    static void iipy_swap8_row(const unsigned char *s, Py_ssize_t n, unsigned char *d)
    {
        Py_ssize_t j = 0;
        int k;
    #if IIPY_SSE2
        for (; j + 2 <= n; j += 2) {
            __m128i x = _mm_loadu_si128((const __m128i *)(s + 8 * j));
            x = _mm_shufflehi_epi16(_mm_shufflelo_epi16(x, 0x1b), 0x1b);
            x = _mm_or_si128(_mm_slli_epi16(x, 8), _mm_srli_epi16(x, 8));
            _mm_storeu_si128((__m128i *)(d + 8 * j), x);
        }
    #endif
        for (; j < n; j++)
            for (k = 0; k < 8; k++)
                d[8 * j + k] = s[8 * j + 7 - k];
    }
    """
    void _swap4_row "iipy_swap4_row" (const unsigned char* s, Py_ssize_t n,
                                      unsigned char* d) noexcept nogil
    void _swap8_row "iipy_swap8_row" (const unsigned char* s, Py_ssize_t n,
                                      unsigned char* d) noexcept nogil


cdef inline void _swap_copy(const unsigned char* s, Py_ssize_t step, Py_ssize_t n,
                            Py_ssize_t size, unsigned char* d) noexcept nogil:
    """Copy n samples of ``size`` bytes, ``step`` bytes apart, to d contiguous, reversing the
    bytes of each (byte accesses, which may alias any type)."""
    cdef Py_ssize_t j
    if size == 2:
        if step == 2:
            for j in range(n):
                d[2 * j] = s[2 * j + 1]
                d[2 * j + 1] = s[2 * j]
        else:
            for j in range(n):
                d[2 * j] = s[j * step + 1]
                d[2 * j + 1] = s[j * step]
    elif size == 4:
        if step == 4:
            _swap4_row(s, n, d)
        else:
            for j in range(n):
                d[4 * j] = s[j * step + 3]
                d[4 * j + 1] = s[j * step + 2]
                d[4 * j + 2] = s[j * step + 1]
                d[4 * j + 3] = s[j * step]
    elif size == 8:
        if step == 8:
            _swap8_row(s, n, d)
            return
        for j in range(n):
            d[8 * j] = s[j * step + 7]
            d[8 * j + 1] = s[j * step + 6]
            d[8 * j + 2] = s[j * step + 5]
            d[8 * j + 3] = s[j * step + 4]
            d[8 * j + 4] = s[j * step + 3]
            d[8 * j + 5] = s[j * step + 2]
            d[8 * j + 6] = s[j * step + 1]
            d[8 * j + 7] = s[j * step]
    else:
        for j in range(n):
            d[j] = s[j * step]


cdef inline void _gather_row(const char* row, Py_ssize_t step, Py_ssize_t n, bint swap,
                             pix_t* dst) noexcept nogil:
    """Copy n samples, ``step`` bytes apart, to a contiguous native row."""
    cdef Py_ssize_t j
    if swap:
        _swap_copy(<const unsigned char*>row, step, n, sizeof(pix_t), <unsigned char*>dst)
    else:
        for j in range(n):
            dst[j] = (<const pix_t*>(row + j * step))[0]


cdef inline float _plain(pix_t x) noexcept nogil:
    """Unscaled value: float samples are copied, integers rounded once (64-bit via float64)."""
    if pix_t is int64_t or pix_t is uint64_t:
        return <float>(<double>x)
    else:
        return <float>x


cdef inline float _nan_if(float y, bint blank) noexcept nogil:
    """NaN where ``blank``, else y (bit mask, vectorisable)."""
    cdef uint32_t b
    cdef uint32_t m = <uint32_t>0 - <uint32_t>blank
    memcpy(&b, &y, 4)
    b = (b & ~m) | (<uint32_t>0x7fc00000 & m)
    memcpy(&y, &b, 4)
    return y


cdef inline void _convert_row(const pix_t* src, Py_ssize_t n, double bscale, double bzero,
                              bint scale, bint has_blank, pix_t blank,
                              float* dst) noexcept nogil:
    cdef Py_ssize_t j
    if pix_t is float or pix_t is double:
        has_blank = False
    if scale:
        if has_blank:
            for j in range(n):
                dst[j] = _nan_if(<float>(<double>src[j] * bscale + bzero), src[j] == blank)
        else:
            for j in range(n):
                dst[j] = <float>(<double>src[j] * bscale + bzero)
    else:
        if has_blank:
            for j in range(n):
                dst[j] = _nan_if(_plain(src[j]), src[j] == blank)
        else:
            for j in range(n):
                dst[j] = _plain(src[j])


def to_float32(const pix_t[:, :] src, bint swap, double bscale, double bzero, bint scale,
               bint has_blank, int64_t blank, bint flip, float[:, ::1] out):
    """out[i'] = convert(src[i]) with i' = h-1-i if flip else i.

    swap: the samples are stored in the opposite byte order (src is the same memory viewed as the
    native type). scale: apply x*bscale + bzero in float64. has_blank: integer samples equal to
    ``blank`` become NaN.
    """
    cdef Py_ssize_t h = src.shape[0], w = src.shape[1]
    if out.shape[0] != h or out.shape[1] != w:
        raise ValueError("out has the wrong shape")
    if h == 0 or w == 0:
        return
    cdef Py_ssize_t s0 = src.strides[0], s1 = src.strides[1]
    cdef const char* base = <const char*>&src[0, 0]
    cdef float* obase = &out[0, 0]
    cdef bint contiguous = s1 == <Py_ssize_t>sizeof(pix_t)
    cdef bint direct = contiguous and not swap
    cdef bint float_copy = False
    if pix_t is float:
        float_copy = not scale
    cdef pix_t* tmp = NULL
    if not direct and not float_copy:
        tmp = <pix_t*>malloc(w * sizeof(pix_t))
        if tmp == NULL:
            raise MemoryError()
    cdef Py_ssize_t i
    cdef const char* row
    cdef float* orow
    # The caller only sets has_blank for integer samples with BLANK inside the type's range
    # (a uint64 BLANK above 2**63 comes as its two's complement, which this cast restores).
    cdef pix_t bval = <pix_t>blank
    try:
        with nogil:
            for i in range(h):
                row = base + i * s0
                orow = obase + (h - 1 - i if flip else i) * w
                if pix_t is float:
                    if float_copy:
                        # Unscaled float32: the gathered row is the result.
                        _gather_row(row, s1, w, swap, orow)
                        continue
                if direct:
                    _convert_row(<const pix_t*>row, w, bscale, bzero, scale, has_blank, bval, orow)
                else:
                    _gather_row(row, s1, w, swap, tmp)
                    _convert_row(<const pix_t*>tmp, w, bscale, bzero, scale, has_blank, bval, orow)
    finally:
        free(tmp)


# ----------------------------------------------------------------------------------------------
# bin2x2
# ----------------------------------------------------------------------------------------------

cdef inline bint _finite(float x) noexcept nogil:
    return fabsf(x) <= FLT_MAX


# The mean of the finite values of each 2x2 block of two rows, from float32 samples that may
# have their bytes reversed: with SSE2 on x86 (4 blocks a step; the same float operations in
# the same order as the portable loop, so the results are identical), a portable loop
# elsewhere and for the last blocks.
cdef extern from *:
    """
    static inline float iipy_f32_bits(const unsigned char *p, int swap)
    {
        uint32_t u;
        float f;
        memcpy(&u, p, 4);
        if (swap)
            u = __builtin_bswap32(u);
        memcpy(&f, &u, 4);
        return f;
    }

    #if IIPY_SSE2
    static inline __m128 iipy_load4(const unsigned char *p, int swap)
    {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        if (swap) {
            x = _mm_shufflehi_epi16(_mm_shufflelo_epi16(x, 0xb1), 0xb1);
            x = _mm_or_si128(_mm_slli_epi16(x, 8), _mm_srli_epi16(x, 8));
        }
        return _mm_castsi128_ps(x);
    }
    #endif

    /* o[j] = mean of the finite values among r0[2j], r0[2j+1], r1[2j], r1[2j+1] (NaN if
       none): ((a + b) + c) + d over the finite ones, divided by their number. */
    static void iipy_bin_pair(const unsigned char *r0, const unsigned char *r1,
                              Py_ssize_t ow, int swap, float *o)
    {
        Py_ssize_t j = 0;
        float a, b, c, d, s, n;
    #if IIPY_SSE2
        const __m128 big = _mm_set1_ps(FLT_MAX), one = _mm_set1_ps(1.0f);
        const __m128 mag = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
        for (; j + 4 <= ow; j += 4) {
            __m128 p0 = iipy_load4(r0 + 8 * j, swap), p1 = iipy_load4(r0 + 8 * j + 16, swap);
            __m128 q0 = iipy_load4(r1 + 8 * j, swap), q1 = iipy_load4(r1 + 8 * j + 16, swap);
            __m128 va = _mm_shuffle_ps(p0, p1, _MM_SHUFFLE(2, 0, 2, 0));
            __m128 vb = _mm_shuffle_ps(p0, p1, _MM_SHUFFLE(3, 1, 3, 1));
            __m128 vc = _mm_shuffle_ps(q0, q1, _MM_SHUFFLE(2, 0, 2, 0));
            __m128 vd = _mm_shuffle_ps(q0, q1, _MM_SHUFFLE(3, 1, 3, 1));
            __m128 fa = _mm_cmple_ps(_mm_and_ps(va, mag), big);
            __m128 fb = _mm_cmple_ps(_mm_and_ps(vb, mag), big);
            __m128 fc = _mm_cmple_ps(_mm_and_ps(vc, mag), big);
            __m128 fd = _mm_cmple_ps(_mm_and_ps(vd, mag), big);
            __m128 vs = _mm_add_ps(_mm_add_ps(_mm_add_ps(_mm_and_ps(va, fa), _mm_and_ps(vb, fb)),
                                              _mm_and_ps(vc, fc)), _mm_and_ps(vd, fd));
            __m128 vn = _mm_add_ps(_mm_add_ps(_mm_add_ps(_mm_and_ps(one, fa), _mm_and_ps(one, fb)),
                                              _mm_and_ps(one, fc)), _mm_and_ps(one, fd));
            _mm_storeu_ps(o + j, _mm_div_ps(vs, vn));
        }
    #endif
        for (; j < ow; j++) {
            a = iipy_f32_bits(r0 + 8 * j, swap);
            b = iipy_f32_bits(r0 + 8 * j + 4, swap);
            c = iipy_f32_bits(r1 + 8 * j, swap);
            d = iipy_f32_bits(r1 + 8 * j + 4, swap);
            s = (((fabsf(a) <= FLT_MAX ? a : 0.0f) + (fabsf(b) <= FLT_MAX ? b : 0.0f))
                 + (fabsf(c) <= FLT_MAX ? c : 0.0f)) + (fabsf(d) <= FLT_MAX ? d : 0.0f);
            n = (((float)(fabsf(a) <= FLT_MAX) + (float)(fabsf(b) <= FLT_MAX))
                 + (float)(fabsf(c) <= FLT_MAX)) + (float)(fabsf(d) <= FLT_MAX);
            o[j] = s / n;
        }
    }
    """
    void _bin_pair "iipy_bin_pair" (const unsigned char* r0, const unsigned char* r1,
                                    Py_ssize_t ow, int swap, float* o) noexcept nogil


def bin2x2(const float[:, :] src, float[:, ::1] out):
    """out[i, j] = mean of the finite values among src[2i:2i+2, 2j:2j+2] (NaN if none)."""
    cdef Py_ssize_t oh = out.shape[0], ow = out.shape[1]
    if src.shape[0] < 2 * oh or src.shape[1] < 2 * ow:
        raise ValueError("src is too small for out")
    if oh == 0 or ow == 0:
        return
    cdef Py_ssize_t s0 = src.strides[0], s1 = src.strides[1]
    cdef const char* base = <const char*>&src[0, 0]
    cdef Py_ssize_t i, j
    cdef const char* c0
    cdef const char* c1
    cdef float* o
    cdef float a, b, c, d, s, n
    with nogil:
        for i in range(oh):
            o = &out[i, 0]
            if s1 == <Py_ssize_t>sizeof(float):
                _bin_pair(<const unsigned char*>(base + (2 * i) * s0),
                          <const unsigned char*>(base + (2 * i + 1) * s0), ow, 0, o)
            else:
                c0 = base + (2 * i) * s0
                c1 = c0 + s0
                for j in range(ow):
                    a = (<const float*>(c0 + (2 * j) * s1))[0]
                    b = (<const float*>(c0 + (2 * j + 1) * s1))[0]
                    c = (<const float*>(c1 + (2 * j) * s1))[0]
                    d = (<const float*>(c1 + (2 * j + 1) * s1))[0]
                    s = ((a if _finite(a) else 0) + (b if _finite(b) else 0)
                         + (c if _finite(c) else 0) + (d if _finite(d) else 0))
                    n = (<float>_finite(a) + <float>_finite(b) + <float>_finite(c)
                         + <float>_finite(d))
                    o[j] = s / n


def bin_raw(const pix_t[:, :] src, bint swap, double bscale, double bzero, bint scale,
            bint has_blank, int64_t blank, bint flip, float[:, ::1] out):
    """out = bin2x2(to_float32(src, ...)) in one pass, without the float32 window.

    out[i] is the mean of the finite values of the 2x2 blocks of rows 2i and 2i+1 of the
    converted window (with ``flip``, converted row r is src row h-1-r: out[i] bins src rows
    h-1-2i and h-2-2i). Unscaled float32 samples are binned straight from their bytes; other
    samples are converted two rows at a time (as to_float32 does) into a scratch of two rows.
    """
    cdef Py_ssize_t h = src.shape[0], w = src.shape[1]
    cdef Py_ssize_t oh = out.shape[0], ow = out.shape[1]
    if h < 2 * oh or w < 2 * ow:
        raise ValueError("src is too small for out")
    if oh == 0 or ow == 0:
        return
    cdef Py_ssize_t s0 = src.strides[0], s1 = src.strides[1]
    cdef const char* base = <const char*>&src[0, 0]
    cdef bint direct = False
    if pix_t is float:
        direct = not scale and s1 == 4
    cdef bint contiguous = s1 == <Py_ssize_t>sizeof(pix_t)
    cdef float* work = NULL
    cdef pix_t* tmp = NULL
    if not direct:
        work = <float*>malloc(2 * w * sizeof(float))
        tmp = <pix_t*>malloc(w * sizeof(pix_t))
        if work == NULL or tmp == NULL:
            free(work)
            free(tmp)
            raise MemoryError()
    cdef Py_ssize_t i, k, r
    cdef const char* rows[2]
    cdef pix_t bval = <pix_t>blank
    try:
        with nogil:
            for i in range(oh):
                for k in range(2):
                    r = 2 * i + k
                    rows[k] = base + (h - 1 - r if flip else r) * s0
                if direct:
                    _bin_pair(<const unsigned char*>rows[0], <const unsigned char*>rows[1], ow,
                              swap, &out[i, 0])
                    continue
                for k in range(2):
                    if contiguous and not swap:
                        _convert_row(<const pix_t*>rows[k], 2 * ow, bscale, bzero, scale,
                                     has_blank, bval, work + k * w)
                    else:
                        _gather_row(rows[k], s1, 2 * ow, swap, tmp)
                        _convert_row(<const pix_t*>tmp, 2 * ow, bscale, bzero, scale, has_blank,
                                     bval, work + k * w)
                _bin_pair(<const unsigned char*>work, <const unsigned char*>(work + w), ow, 0,
                          &out[i, 0])
    finally:
        free(work)
        free(tmp)


# ----------------------------------------------------------------------------------------------
# render
# ----------------------------------------------------------------------------------------------

cdef inline float _sel(bint c, float a, float b) noexcept nogil:
    """a if c else b, with a bit mask rather than a branch: both values are already computed, so
    the loops using it vectorise (compilers may not speculate floating-point operations)."""
    cdef uint32_t ua, ub
    cdef uint32_t m = <uint32_t>0 - <uint32_t>c
    memcpy(&ua, &a, 4)
    memcpy(&ub, &b, 4)
    ua = (ua & m) | (ub & ~m)
    memcpy(&a, &ua, 4)
    return a


cdef inline float _norm(float t, float mn, float f) noexcept nogil:
    """(t - mn) * f, or +0 when t is not finite."""
    cdef float zero = 0
    return _sel(fabsf(t) <= FLT_MAX, (t - mn) * f, zero)


cdef inline void _norm_row(const float* x, Py_ssize_t n, float mn, float f,
                           float* v) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        v[j] = _norm(x[j], mn, f)


cdef inline void _mix_row(const float* nrm, Py_ssize_t stride, const float* m, Py_ssize_t nin,
                          Py_ssize_t n, float* acc) noexcept nogil:
    """acc = sum over j < nin of m[j] * nrm[j*stride + .], ascending j, skipping zero
    coefficients (a 0 contributes nothing, even against an infinite value)."""
    cdef Py_ssize_t j, x
    cdef float c
    for x in range(n):
        acc[x] = 0
    for j in range(nin):
        c = m[j]
        if c != 0:
            for x in range(n):
                acc[x] = acc[x] + c * nrm[j * stride + x]


# GAM through the table. The gather makes this loop scalar for compilers targeting plain SSE2,
# so on x86 it is written with SSE2 intrinsics (4 pixels per step, gathers by hand); elsewhere a
# portable loop does the same arithmetic. Both give identical results. The same table layout
# serves every stretch that has a table (POWER, LOG, ASINH); values outside it are computed
# exactly by iipy_stretch1.
cdef extern from *:
    """
    /* Table layout: entry i holds f(v) at v = 2**e (1 + m / 2**MBITS) with
       i = (e - EMIN) * 2**MBITS + m, i.e. i = (bits(v) - bits(2**EMIN)) >> (23 - MBITS). */
    #define IIPY_LUT_MBITS 8
    #define IIPY_LUT_EMIN (-24)
    #define IIPY_FRAC_BITS (23 - IIPY_LUT_MBITS)
    #define IIPY_FRAC_MASK ((1u << IIPY_FRAC_BITS) - 1u)

    /* Stretch codes, as in iipy.kernels */
    #define IIPY_ST_POWER 0
    #define IIPY_ST_LOG 1
    #define IIPY_ST_ASINH 2
    #define IIPY_ST_SQRT 3

    /* The exact stretch of a positive (or NaN) v: POWER v**g in float32 (powf); LOG
       log1p(255 v) * p1 and ASINH asinh(v * p0) * p1 in double, rounded once to float32
       (p0 = 1/BETA, p1 = 1/log(256) or 1/asinh(1/BETA), computed by iipy.kernels);
       SQRT sqrtf(v). Every stretch is 0 at v = 0. */
    static inline float iipy_stretch1(float v, int kind, float g, double p0, double p1)
    {
        switch (kind) {
        case IIPY_ST_LOG: return (float)(log1p(255.0 * (double)v) * p1);
        case IIPY_ST_ASINH: return (float)(asinh((double)v * p0) * p1);
        case IIPY_ST_SQRT: return sqrtf(v);
        default: return powf(v, g);
        }
    }

    /* f(max(v, 0)) with f(0) = 0: linear interpolation in the table when lo_bits <= bits(v)
       and bits(v) - lo_bits < span (i.e. lo <= v < hi; negative v, NaN and -0 fail the
       unsigned test), else 0 for v <= 0, else the exact formula (tiny or large positive v,
       +inf, NaN). */
    static inline float iipy_stretch_lut1(float v, const float *lut, uint32_t lo_bits,
                                          uint32_t span, int kind, float g, double p0, double p1)
    {
        uint32_t b, off, k;
        float a, fr;
        memcpy(&b, &v, 4);
        off = b - lo_bits;
        if (off < span) {
            k = off >> IIPY_FRAC_BITS;
            fr = (float)(b & IIPY_FRAC_MASK) * (1.0f / (float)(1u << IIPY_FRAC_BITS));
            a = lut[k];
            return a + (lut[k + 1] - a) * fr;
        }
        if (v <= 0.0f)
            return 0.0f;
        return iipy_stretch1(v, kind, g, p0, p1);
    }

    /* v[j] = f(max(v[j], 0)) through the table, then 1 - v[j] if invert. */
    static void iipy_stretch_lut_row(float *v, Py_ssize_t n, const float *lut, uint32_t lo_bits,
                                     uint32_t span, int kind, float g, double p0, double p1,
                                     int invert)
    {
        Py_ssize_t j = 0, i;
        float r;
    #if IIPY_SSE2
        const __m128i vlo = _mm_set1_epi32((int)lo_bits);
        const __m128i sign = _mm_set1_epi32((int)0x80000000u);
        const __m128i vspan = _mm_set1_epi32((int)(span ^ 0x80000000u));
        const __m128i fmask = _mm_set1_epi32((int)IIPY_FRAC_MASK);
        const __m128i one_bits = _mm_set1_epi32(0x3f800000);
        const __m128 one = _mm_set1_ps(1.0f), zero = _mm_setzero_ps();
        for (; j + 4 <= n; j += 4) {
            __m128 x = _mm_loadu_ps(v + j);
            __m128i b = _mm_castps_si128(x);
            __m128i off = _mm_sub_epi32(b, vlo);
            /* unsigned off < span, as a signed comparison of both sides with the sign flipped */
            __m128i in = _mm_cmplt_epi32(_mm_xor_si128(off, sign), vspan);
            __m128i k = _mm_srli_epi32(_mm_and_si128(off, in), IIPY_FRAC_BITS);
            /* fraction = (b & mask) / 2**FRAC_BITS, exactly: 1.f - 1 with f the low bits */
            __m128 fr = _mm_sub_ps(_mm_castsi128_ps(_mm_or_si128(
                _mm_slli_epi32(_mm_and_si128(b, fmask), 23 - IIPY_FRAC_BITS), one_bits)), one);
            int k0 = _mm_cvtsi128_si32(k);
            int k1 = _mm_cvtsi128_si32(_mm_shuffle_epi32(k, 1));
            int k2 = _mm_cvtsi128_si32(_mm_shuffle_epi32(k, 2));
            int k3 = _mm_cvtsi128_si32(_mm_shuffle_epi32(k, 3));
            __m128 a = _mm_setr_ps(lut[k0], lut[k1], lut[k2], lut[k3]);
            __m128 c = _mm_setr_ps(lut[k0 + 1], lut[k1 + 1], lut[k2 + 1], lut[k3 + 1]);
            __m128 res = _mm_add_ps(a, _mm_mul_ps(_mm_sub_ps(c, a), fr));
            __m128 ok = _mm_or_ps(_mm_castsi128_ps(in), _mm_cmple_ps(x, zero));
            if (_mm_movemask_ps(ok) != 0xf) {
                /* some lane needs the exact formula: do these four one by one */
                for (i = j; i < j + 4; i++) {
                    r = iipy_stretch_lut1(v[i], lut, lo_bits, span, kind, g, p0, p1);
                    v[i] = invert ? 1.0f - r : r;
                }
                continue;
            }
            res = _mm_and_ps(res, _mm_castsi128_ps(in));   /* v <= 0 -> +0 */
            if (invert)
                res = _mm_sub_ps(one, res);
            _mm_storeu_ps(v + j, res);
        }
    #endif
        for (; j < n; j++) {
            r = iipy_stretch_lut1(v[j], lut, lo_bits, span, kind, g, p0, p1);
            v[j] = invert ? 1.0f - r : r;
        }
    }
    /* v[j] = sqrt(v[j] < 0 ? 0 : v[j]) (NaN and -0 kept), then 1 - v[j] if invert. sqrtf is
       correctly rounded, like SQRTPS; the intrinsics only avoid the errno check that keeps
       compilers from vectorising sqrtf. */
    static void iipy_sqrt_row(float *v, Py_ssize_t n, int invert)
    {
        Py_ssize_t j = 0;
        float t;
    #if IIPY_SSE2
        const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
        for (; j + 4 <= n; j += 4) {
            __m128 x = _mm_loadu_ps(v + j);
            x = _mm_sqrt_ps(_mm_andnot_ps(_mm_cmplt_ps(x, zero), x));
            if (invert)
                x = _mm_sub_ps(one, x);
            _mm_storeu_ps(v + j, x);
        }
    #endif
        for (; j < n; j++) {
            t = v[j];
            t = sqrtf(t < 0.0f ? 0.0f : t);
            v[j] = invert ? 1.0f - t : t;
        }
    }
    """
    const int _MBITS "IIPY_LUT_MBITS"
    const int _EMIN "IIPY_LUT_EMIN"
    void _sqrt_row "iipy_sqrt_row" (float* v, Py_ssize_t n, int invert) noexcept nogil
    const int _ST_POWER "IIPY_ST_POWER"
    const int _ST_LOG "IIPY_ST_LOG"
    const int _ST_ASINH "IIPY_ST_ASINH"
    const int _ST_SQRT "IIPY_ST_SQRT"
    float _stretch1 "iipy_stretch1" (float v, int kind, float g, double p0,
                                     double p1) noexcept nogil
    void _stretch_lut_row "iipy_stretch_lut_row" (float* v, Py_ssize_t n, const float* lut,
                                                  uint32_t lo_bits, uint32_t span, int kind,
                                                  float g, double p0, double p1,
                                                  int invert) noexcept nogil

# Exported so that iipy.kernels can check that it builds tables with the same layout.
LUT_MBITS = _MBITS
LUT_EMIN = _EMIN


cdef inline uint32_t _float_bits(float x) noexcept nogil:
    cdef uint32_t b
    memcpy(&b, &x, 4)
    return b


cdef inline void _stretch_row(float* v, Py_ssize_t n, int kind, float g, double p0, double p1,
                              const float* lut, float lo, float hi, bint use_lut,
                              bint invert) noexcept nogil:
    """GAM (v = f(max(v, 0)), f the stretch ``kind``), then INV (v = 1 - v) if asked, in place.
    With the table (POWER with g > 0, LOG, ASINH), lo and hi are the range it covers
    (lo = 2**LUT_EMIN). Without it, POWER is powf(max(v, 0), g) for every g (0**0 = 1,
    0**-g = inf), and the other stretches give 0 for v <= 0 and the exact formula elsewhere."""
    cdef Py_ssize_t j
    cdef float t
    cdef float one = 1
    cdef float zero = 0
    cdef uint32_t lo_bits
    if use_lut:
        lo_bits = _float_bits(lo)
        _stretch_lut_row(v, n, lut, lo_bits, _float_bits(hi) - lo_bits, kind, g, p0, p1, invert)
    elif kind == _ST_POWER:
        for j in range(n):
            t = v[j]
            if t < 0:
                t = 0
            t = powf(t, g)
            v[j] = one - t if invert else t
    elif kind == _ST_SQRT:
        _sqrt_row(v, n, invert)
    else:
        for j in range(n):
            t = v[j]
            t = zero if t <= 0 else _stretch1(t, kind, g, p0, p1)
            v[j] = one - t if invert else t


cdef inline void _invert_row(float* v, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    cdef float one = 1
    for j in range(n):
        v[j] = one - v[j]


# Quantisation, colormaps and RGB interleaving, row by row. GCC cannot turn the clamps into
# MINPS/MAXPS without assuming away NaN, so on x86 these loops are written with SSE2 intrinsics;
# the portable loops below do the same arithmetic (iipy_minf/iipy_maxf have the NaN semantics of
# MINPS/MAXPS: the second operand when unordered) and give identical results.
#
# Colormaps use min/max forms of the protocol tables. With 3v and 4v computed in float32, the
# table's boundary tests coincide with the crossings of the linear pieces (3v < 1 iff v < 1/3f,
# 3v < 2 iff v < 2/3f, and the JET thresholds are exact), so each form yields the table value
# (up to the sign of a zero, which quantises identically), and NaN lands where the tables put it:
#   HOT  R = min(max(0, 3v), 1)   G = min(max(0, 3v-1), 1)   B = min(max(0, 3v-2), 1)
#   COLD R = HOT B, G = HOT G, B = HOT R
#   JET  R = v < 1 ? max(min(min(4v-1.5, 1), 4.5-4v), 0) : 0.5
#        G = max(min(min(4v-0.5, 1), 3.5-4v), 0)
#        B = v >= 0 ? max(min(min(4v+0.5, 1), 2.5-4v), 0) : 0
cdef extern from *:
    """
    static inline float iipy_minf(float a, float b) { return a < b ? a : b; }
    static inline float iipy_maxf(float a, float b) { return a > b ? a : b; }

    /* truncate(clamp(v * 255 * contrast, 0, 255)); NaN and +inf -> 255, -inf -> 0 */
    static inline int iipy_quant1(float v, float contrast)
    {
        float t = v * 255.0f * contrast;
        t = iipy_minf(t, 255.0f);
        t = iipy_maxf(t, 0.0f);
        return (int)t;
    }

    /* (x - mn) * f, or +0 for a non-finite x */
    static inline float iipy_norm1(float x, float mn, float f)
    {
        float r = (x - mn) * f;
        return fabsf(x) <= FLT_MAX ? r : 0.0f;
    }

    static inline void iipy_cmap1(float x, int cmap, float *r, float *g, float *b)
    {
        float x3 = 3.0f * x, x4 = 4.0f * x, t;
        switch (cmap) {
        case 1: /* HOT */
        case 2: /* COLD */
            *r = iipy_minf(iipy_maxf(0.0f, x3), 1.0f);
            *g = iipy_minf(iipy_maxf(0.0f, x3 - 1.0f), 1.0f);
            *b = iipy_minf(iipy_maxf(0.0f, x3 - 2.0f), 1.0f);
            if (cmap == 2) { t = *r; *r = *b; *b = t; }
            break;
        case 3: /* JET */
            *r = x < 1.0f ? iipy_maxf(iipy_minf(iipy_minf(x4 - 1.5f, 1.0f), 4.5f - x4), 0.0f) : 0.5f;
            *g = iipy_maxf(iipy_minf(iipy_minf(x4 - 0.5f, 1.0f), 3.5f - x4), 0.0f);
            *b = x >= 0.0f ? iipy_maxf(iipy_minf(iipy_minf(x4 + 0.5f, 1.0f), 2.5f - x4), 0.0f) : 0.0f;
            break;
        case 4: *r = x; *g = 0.0f; *b = 0.0f; break;   /* RED */
        case 5: *r = 0.0f; *g = x; *b = 0.0f; break;   /* GREEN */
        default: *r = 0.0f; *g = 0.0f; *b = x; break;  /* BLUE */
        }
    }

    static inline void iipy_store_rgb1(unsigned char *o, float r, float g, float b, float contrast)
    {
        o[0] = (unsigned char)iipy_quant1(r, contrast);
        o[1] = (unsigned char)iipy_quant1(g, contrast);
        o[2] = (unsigned char)iipy_quant1(b, contrast);
    }

    #if IIPY_SSE2
    static inline __m128i iipy_quant4(__m128 v, __m128 contrast)
    {
        const __m128 c255 = _mm_set1_ps(255.0f);
        __m128 t = _mm_mul_ps(_mm_mul_ps(v, c255), contrast);
        t = _mm_min_ps(t, c255);
        t = _mm_max_ps(t, _mm_setzero_ps());
        return _mm_cvttps_epi32(t);
    }

    /* 16 quantised values (four vectors of int32 in 0..255) to 16 bytes */
    static inline void iipy_store16(unsigned char *o, __m128i a, __m128i b, __m128i c, __m128i d)
    {
        _mm_storeu_si128((__m128i *)o, _mm_packus_epi16(_mm_packs_epi32(a, b),
                                                        _mm_packs_epi32(c, d)));
    }

    /* four RGB pixels (int32 in 0..255) to 12 interleaved bytes */
    static inline void iipy_store_rgb4(unsigned char *o, __m128i r, __m128i g, __m128i b)
    {
        __m128i p = _mm_or_si128(r, _mm_or_si128(_mm_slli_epi32(g, 8), _mm_slli_epi32(b, 16)));
        /* in each 64-bit half: pixel 2k in bytes 0-2, pixel 2k+1 in bytes 3-5 */
        __m128i lo = _mm_and_si128(p, _mm_set_epi32(0, 0xffffff, 0, 0xffffff));
        __m128i hi = _mm_srli_epi64(_mm_and_si128(p, _mm_set_epi32(0xffffff, 0, 0xffffff, 0)), 8);
        __m128i q = _mm_or_si128(lo, hi);
        /* upper half moved to bytes 6-11 */
        __m128i res = _mm_or_si128(_mm_move_epi64(q),
                                   _mm_slli_si128(_mm_unpackhi_epi64(q, _mm_setzero_si128()), 6));
        uint32_t last = (uint32_t)_mm_cvtsi128_si32(_mm_srli_si128(res, 8));
        _mm_storel_epi64((__m128i *)o, res);
        memcpy(o + 8, &last, 4);
    }

    static inline __m128 iipy_norm4(__m128 x, __m128 mn, __m128 f)
    {
        const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
        __m128 finite = _mm_cmple_ps(_mm_and_ps(x, absmask), _mm_set1_ps(FLT_MAX));
        return _mm_and_ps(_mm_mul_ps(_mm_sub_ps(x, mn), f), finite);
    }

    static inline void iipy_cmap4(__m128 x, int cmap, __m128 *r, __m128 *g, __m128 *b)
    {
        const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
        __m128 x3 = _mm_mul_ps(_mm_set1_ps(3.0f), x), x4 = _mm_mul_ps(_mm_set1_ps(4.0f), x), m;
        switch (cmap) {
        case 1:
        case 2:
            *r = _mm_min_ps(_mm_max_ps(zero, x3), one);
            *g = _mm_min_ps(_mm_max_ps(zero, _mm_sub_ps(x3, one)), one);
            *b = _mm_min_ps(_mm_max_ps(zero, _mm_sub_ps(x3, _mm_set1_ps(2.0f))), one);
            if (cmap == 2) { m = *r; *r = *b; *b = m; }
            break;
        case 3:
            m = _mm_cmplt_ps(x, one);
            *r = _mm_max_ps(_mm_min_ps(_mm_min_ps(_mm_sub_ps(x4, _mm_set1_ps(1.5f)), one),
                                       _mm_sub_ps(_mm_set1_ps(4.5f), x4)), zero);
            *r = _mm_or_ps(_mm_and_ps(m, *r), _mm_andnot_ps(m, _mm_set1_ps(0.5f)));
            *g = _mm_max_ps(_mm_min_ps(_mm_min_ps(_mm_sub_ps(x4, _mm_set1_ps(0.5f)), one),
                                       _mm_sub_ps(_mm_set1_ps(3.5f), x4)), zero);
            *b = _mm_max_ps(_mm_min_ps(_mm_min_ps(_mm_add_ps(x4, _mm_set1_ps(0.5f)), one),
                                       _mm_sub_ps(_mm_set1_ps(2.5f), x4)), zero);
            *b = _mm_and_ps(*b, _mm_cmpge_ps(x, zero));
            break;
        case 4: *r = x; *g = zero; *b = zero; break;
        case 5: *r = zero; *g = x; *b = zero; break;
        default: *r = zero; *g = zero; *b = x; break;
        }
    }
    #endif

    /* grey output straight from the samples: normalise, invert if asked, quantise */
    static void iipy_grey_row(const float *x, Py_ssize_t n, float mn, float f, int invert,
                              float contrast, unsigned char *o)
    {
        Py_ssize_t j = 0;
        float v;
    #if IIPY_SSE2
        const __m128 vmn = _mm_set1_ps(mn), vf = _mm_set1_ps(f), one = _mm_set1_ps(1.0f);
        const __m128 vc = _mm_set1_ps(contrast);
        __m128i q[4];
        int k;
        for (; j + 16 <= n; j += 16) {
            for (k = 0; k < 4; k++) {
                __m128 t = iipy_norm4(_mm_loadu_ps(x + j + 4 * k), vmn, vf);
                if (invert)
                    t = _mm_sub_ps(one, t);
                q[k] = iipy_quant4(t, vc);
            }
            iipy_store16(o + j, q[0], q[1], q[2], q[3]);
        }
    #endif
        for (; j < n; j++) {
            v = iipy_norm1(x[j], mn, f);
            o[j] = (unsigned char)iipy_quant1(invert ? 1.0f - v : v, contrast);
        }
    }

    static void iipy_quant_row(const float *v, Py_ssize_t n, float contrast, unsigned char *o)
    {
        Py_ssize_t j = 0;
    #if IIPY_SSE2
        const __m128 vc = _mm_set1_ps(contrast);
        for (; j + 16 <= n; j += 16)
            iipy_store16(o + j, iipy_quant4(_mm_loadu_ps(v + j), vc),
                         iipy_quant4(_mm_loadu_ps(v + j + 4), vc),
                         iipy_quant4(_mm_loadu_ps(v + j + 8), vc),
                         iipy_quant4(_mm_loadu_ps(v + j + 12), vc));
    #endif
        for (; j < n; j++)
            o[j] = (unsigned char)iipy_quant1(v[j], contrast);
    }

    /* three channel rows to interleaved RGB bytes */
    static void iipy_rgb_row(const float *r, const float *g, const float *b, Py_ssize_t n,
                             float contrast, unsigned char *o)
    {
        Py_ssize_t j = 0;
    #if IIPY_SSE2
        const __m128 vc = _mm_set1_ps(contrast);
        for (; j + 4 <= n; j += 4)
            iipy_store_rgb4(o + 3 * j, iipy_quant4(_mm_loadu_ps(r + j), vc),
                            iipy_quant4(_mm_loadu_ps(g + j), vc),
                            iipy_quant4(_mm_loadu_ps(b + j), vc));
    #endif
        for (; j < n; j++)
            iipy_store_rgb1(o + 3 * j, r[j], g[j], b[j], contrast);
    }

    /* colormap of one row to interleaved RGB bytes (cmap 1..6 as in iipy.kernels) */
    static void iipy_cmap_row(const float *v, Py_ssize_t n, int cmap, float contrast,
                              unsigned char *o)
    {
        Py_ssize_t j = 0;
        float r, g, b;
    #if IIPY_SSE2
        const __m128 vc = _mm_set1_ps(contrast);
        __m128 vr, vg, vb;
        for (; j + 4 <= n; j += 4) {
            iipy_cmap4(_mm_loadu_ps(v + j), cmap, &vr, &vg, &vb);
            iipy_store_rgb4(o + 3 * j, iipy_quant4(vr, vc), iipy_quant4(vg, vc),
                            iipy_quant4(vb, vc));
        }
    #endif
        for (; j < n; j++) {
            iipy_cmap1(v[j], cmap, &r, &g, &b);
            iipy_store_rgb1(o + 3 * j, r, g, b, contrast);
        }
    }
    """
    void _grey_row "iipy_grey_row" (const float* x, Py_ssize_t n, float mn, float f, int invert,
                                    float contrast, unsigned char* o) noexcept nogil
    void _quant_row "iipy_quant_row" (const float* v, Py_ssize_t n, float contrast,
                                      unsigned char* o) noexcept nogil
    void _rgb_row "iipy_rgb_row" (const float* r, const float* g, const float* b, Py_ssize_t n,
                                  float contrast, unsigned char* o) noexcept nogil
    void _cmap_row "iipy_cmap_row" (const float* v, Py_ssize_t n, int cmap, float contrast,
                                    unsigned char* o) noexcept nogil


cdef struct _Plan:
    # the render pipeline of one call, set up by _plan_init
    Py_ssize_t w, nin, kmix, ncomp
    const float* mins
    const float* factors
    const float* ctw
    Py_ssize_t ctw_cols
    bint has_ctw, use_gamma, use_lut, invert, simple_grey
    int stretch, cmap
    float gamma, lut_lo, lut_hi, contrast
    double p0, p1
    const float* lutp
    unsigned char* need  # nin flags: input channels some used CTW row reads
    unsigned char* used  # nchan flags: channels a row of output reads
    float* work
    float* comp[3]


cdef int _plan_init(_Plan* p, Py_ssize_t nchan, Py_ssize_t h, Py_ssize_t w,
                    const float[::1] mins, const float[::1] factors, const float[:, ::1] ctw,
                    bint has_ctw, int stretch, float gamma, double p0, double p1,
                    bint use_gamma, const float[::1] lut, float lut_lo, float lut_hi,
                    bint invert, int cmap, float contrast, unsigned char[:, ::1] out) except -1:
    """Validate the arguments of render and set up its plan; 1 when there is work, 0 for an
    empty output. The caller frees p.work, p.need and p.used."""
    cdef Py_ssize_t ncomp = 1 if (nchan <= 2 or cmap != CM_NONE) else 3
    cdef Py_ssize_t nout = 3 if (cmap != CM_NONE or nchan >= 3) else 1
    cdef Py_ssize_t nrows = ctw.shape[0], ncols = ctw.shape[1]
    cdef Py_ssize_t nin = ncols if ncols < nchan else nchan
    cdef Py_ssize_t kmix = nrows if nrows < ncomp else ncomp
    cdef bint use_lut = use_gamma and lut_hi > lut_lo
    cdef Py_ssize_t j, k
    p.work = NULL
    p.need = NULL
    p.used = NULL
    if cmap < CM_NONE or cmap > CM_BLUE:
        raise ValueError("unknown colormap")
    if stretch < _ST_POWER or stretch > _ST_SQRT or (use_lut and stretch == _ST_SQRT):
        raise ValueError("unknown stretch")
    if mins.shape[0] < nchan or factors.shape[0] < nchan:
        raise ValueError("per-channel arrays are too short")
    if out.shape[0] != h or out.shape[1] != w * nout:
        raise ValueError("out has the wrong shape")
    if use_lut and (lut_lo != 2.0 ** _EMIN or lut.shape[0] < 2 or
                    <double>lut_hi > 2.0 ** (<double>(lut.shape[0] - 1) / (1 << _MBITS) + _EMIN)):
        raise ValueError("gamma table too short for its range")
    if h == 0 or w == 0:
        return 0
    if not has_ctw:
        nin = 0
        kmix = 0
    p.w, p.nin, p.kmix, p.ncomp = w, nin, kmix, ncomp
    p.mins, p.factors = &mins[0], &factors[0]
    p.ctw, p.ctw_cols = &ctw[0, 0], ncols
    p.has_ctw, p.use_gamma, p.use_lut, p.invert = has_ctw, use_gamma, use_lut, invert
    p.simple_grey = ncomp == 1 and not has_ctw and not use_gamma and cmap == CM_NONE
    p.stretch, p.cmap = stretch, cmap
    p.gamma, p.lut_lo, p.lut_hi, p.contrast = gamma, lut_lo, lut_hi, contrast
    p.p0, p.p1 = p0, p1
    p.lutp = &lut[0]
    # Work rows: normalised inputs read by the CTW (nin rows), then 3 component rows.
    p.work = <float*>malloc(((nin + 3) * w + 1) * sizeof(float))
    p.need = <unsigned char*>malloc(nin + 1)
    p.used = <unsigned char*>malloc(nchan + 1)
    if p.work == NULL or p.need == NULL or p.used == NULL:
        raise MemoryError()
    for k in range(3):
        p.comp[k] = p.work + (nin + k) * w
    for j in range(nin):
        p.need[j] = 0
        for k in range(kmix):
            if ctw[k, j] != 0:
                p.need[j] = 1
    for k in range(nchan):
        if p.simple_grey:
            p.used[k] = k == 0
        elif has_ctw:
            p.used[k] = k < nin and p.need[k]
        else:
            p.used[k] = k < ncomp
    return 1


cdef void _plan_free(_Plan* p) noexcept:
    free(p.work)
    free(p.need)
    free(p.used)


cdef void _render_row(const _Plan* p, const float** rows, unsigned char* orow) noexcept nogil:
    """One output row from the rows of the input channels (those p.used marks)."""
    cdef Py_ssize_t j, k, w = p.w
    cdef float* nrm = p.work
    if p.simple_grey:
        _grey_row(rows[0], w, p.mins[0], p.factors[0], p.invert, p.contrast, orow)
        return
    # 1. normalise, 2. CTW; 3. band flattening = computing ncomp components only
    if p.has_ctw:
        for j in range(p.nin):
            if p.need[j]:
                _norm_row(rows[j], w, p.mins[j], p.factors[j], nrm + j * w)
        for k in range(p.ncomp):
            if k < p.kmix:
                _mix_row(nrm, w, p.ctw + k * p.ctw_cols, p.nin, w, p.comp[k])
            else:
                for j in range(w):
                    p.comp[k][j] = 0
    else:
        for k in range(p.ncomp):
            _norm_row(rows[k], w, p.mins[k], p.factors[k], p.comp[k])
    # 4. GAM, 5. INV
    for k in range(p.ncomp):
        if p.use_gamma:
            _stretch_row(p.comp[k], w, p.stretch, p.gamma, p.p0, p.p1, p.lutp, p.lut_lo,
                         p.lut_hi, p.use_lut, p.invert)
        elif p.invert:
            _invert_row(p.comp[k], w)
    # 6. CMP, 7. quantise with CNT
    if p.cmap != CM_NONE:
        _cmap_row(p.comp[0], w, p.cmap, p.contrast, orow)
    elif p.ncomp == 3:
        _rgb_row(p.comp[0], p.comp[1], p.comp[2], w, p.contrast, orow)
    else:
        _quant_row(p.comp[0], w, p.contrast, orow)


def render(const float[:, :, ::1] src, const float[::1] mins, const float[::1] factors,
           const float[:, ::1] ctw, bint has_ctw, int stretch, float gamma, double p0, double p1,
           bint use_gamma, const float[::1] lut, float lut_lo, float lut_hi, bint invert,
           int cmap, float contrast, unsigned char[:, ::1] out):
    """The float pipeline of iipy.kernels.render, row by row.

    mins/factors: per-channel normalisation (v = (x - min) * factor, non-finite x -> 0).
    ctw: (K, L) channel mixing if has_ctw. GAM (if use_gamma) is the stretch ``stretch`` with
    parameters gamma (POWER), p0, p1 (see iipy_stretch1); it uses the table ``lut`` for
    lut_lo <= v < lut_hi when lut_hi > lut_lo, the exact formula elsewhere.
    out: (h, w * nout), nout = 3 for colour, else 1.
    """
    cdef Py_ssize_t nchan = src.shape[0], h = src.shape[1], w = src.shape[2]
    cdef _Plan p
    cdef Py_ssize_t i, k
    cdef const float** rows = NULL
    try:
        if not _plan_init(&p, nchan, h, w, mins, factors, ctw, has_ctw, stretch, gamma, p0,
                          p1, use_gamma, lut, lut_lo, lut_hi, invert, cmap, contrast, out):
            return
        rows = <const float**>malloc(nchan * sizeof(float*))
        if rows == NULL:
            raise MemoryError()
        with nogil:
            for i in range(h):
                for k in range(nchan):
                    rows[k] = &src[k, i, 0]
                _render_row(&p, rows, &out[i, 0])
    finally:
        free(rows)
        _plan_free(&p)


def render_raw(const pix_t[:, :, :] src, bint swap, double bscale, double bzero, bint scale,
               bint has_blank, int64_t blank, bint flip, const float[::1] mins,
               const float[::1] factors, const float[:, ::1] ctw, bint has_ctw, int stretch,
               float gamma, double p0, double p1, bint use_gamma, const float[::1] lut,
               float lut_lo, float lut_hi, bint invert, int cmap, float contrast,
               unsigned char[:, ::1] out):
    """render(to_float32(src[k], ...) for each channel k, ...) without the float32 window:
    each row of each channel the pipeline reads is converted (as to_float32 does, with
    ``flip``: output row i from src row h-1-i) into a one-row buffer just before use."""
    cdef Py_ssize_t nchan = src.shape[0], h = src.shape[1], w = src.shape[2]
    cdef _Plan p
    cdef Py_ssize_t i, k, r
    cdef const float** rows = NULL
    cdef float* conv = NULL
    cdef pix_t* tmp = NULL
    cdef Py_ssize_t s1 = src.strides[2]
    cdef bint direct = s1 == <Py_ssize_t>sizeof(pix_t) and not swap
    cdef bint float_copy = False
    if pix_t is float:
        float_copy = not scale
    cdef pix_t bval = <pix_t>blank
    cdef const char* row
    try:
        if not _plan_init(&p, nchan, h, w, mins, factors, ctw, has_ctw, stretch, gamma, p0,
                          p1, use_gamma, lut, lut_lo, lut_hi, invert, cmap, contrast, out):
            return
        rows = <const float**>malloc(nchan * sizeof(float*))
        conv = <float*>malloc(nchan * w * sizeof(float))
        tmp = <pix_t*>malloc(w * sizeof(pix_t))
        if rows == NULL or conv == NULL or tmp == NULL:
            raise MemoryError()
        with nogil:
            for i in range(h):
                r = h - 1 - i if flip else i
                for k in range(nchan):
                    rows[k] = conv + k * w
                    if not p.used[k]:
                        continue
                    row = <const char*>&src[k, r, 0]
                    if float_copy:
                        _gather_row(row, s1, w, swap, <pix_t*>(conv + k * w))
                    elif direct:
                        _convert_row(<const pix_t*>row, w, bscale, bzero, scale, has_blank,
                                     bval, conv + k * w)
                    else:
                        _gather_row(row, s1, w, swap, tmp)
                        _convert_row(<const pix_t*>tmp, w, bscale, bzero, scale, has_blank,
                                     bval, conv + k * w)
                _render_row(&p, rows, &out[i, 0])
    finally:
        free(rows)
        free(conv)
        free(tmp)
        _plan_free(&p)


def stretch_inplace(float[::1] v, int stretch, float gamma, double p0, double p1,
                    const float[::1] lut, float lut_lo, float lut_hi):
    """v = f(max(v, 0)) in place, as render's GAM step does it (table when lut_hi > lut_lo)."""
    cdef Py_ssize_t n = v.shape[0]
    cdef bint use_lut = lut_hi > lut_lo
    if stretch < _ST_POWER or stretch > _ST_SQRT or (use_lut and stretch == _ST_SQRT):
        raise ValueError("unknown stretch")
    if use_lut and (lut_lo != 2.0 ** _EMIN or lut.shape[0] < 2 or
                    <double>lut_hi > 2.0 ** (<double>(lut.shape[0] - 1) / (1 << _MBITS) + _EMIN)):
        raise ValueError("gamma table too short for its range")
    if n == 0:
        return
    with nogil:
        _stretch_row(&v[0], n, stretch, gamma, p0, p1, &lut[0], lut_lo, lut_hi, use_lut, False)


def finish_row(const float[::1] v, int cmap, float contrast, unsigned char[::1] out):
    """CMP (cmap > 0) and quantisation of one row of values, as render's last steps do them.

    out has len(v) bytes for grey, 3 * len(v) for a colormap. For tests of special values
    (NaN, infinities) that normalisation never lets through."""
    cdef Py_ssize_t n = v.shape[0]
    if cmap < CM_NONE or cmap > CM_BLUE:
        raise ValueError("unknown colormap")
    if out.shape[0] != (3 * n if cmap != CM_NONE else n):
        raise ValueError("out has the wrong length")
    if n == 0:
        return
    with nogil:
        if cmap != CM_NONE:
            _cmap_row(&v[0], n, cmap, contrast, &out[0])
        else:
            _quant_row(&v[0], n, contrast, &out[0])


# ----------------------------------------------------------------------------------------------
# histogram (CNT=st, CNT=eq)
# ----------------------------------------------------------------------------------------------

cdef extern from *:
    """
    static inline int iipy_level1(float x, float mn, float f)
    {
        return iipy_quant1(iipy_norm1(x, mn, f), 1.0f);
    }
    """
    int _level1 "iipy_level1" (float x, float mn, float f) noexcept nogil


def histogram(const float[:, :, ::1] src, const float[::1] mins, const float[::1] factors,
              int64_t[::1] out):
    """out[q] += number of pixels whose level is q (out has 256 counts; it is not cleared).

    A pixel's level is the mean over its channels of trunc(clamp(255 v, 0, 255)), v the
    normalised value of render (non-finite samples give 0), rounded half up:
    (2 sum + C) // (2 C) for C channels."""
    cdef Py_ssize_t nchan = src.shape[0], h = src.shape[1], w = src.shape[2]
    if mins.shape[0] < nchan or factors.shape[0] < nchan:
        raise ValueError("per-channel arrays are too short")
    if out.shape[0] != 256:
        raise ValueError("out must hold 256 counts")
    if nchan == 0 or h == 0 or w == 0:
        return
    cdef int64_t* sums = <int64_t*>malloc(w * sizeof(int64_t))
    if sums == NULL:
        raise MemoryError()
    cdef Py_ssize_t i, j, k
    cdef const float* row
    cdef float mn, f
    cdef int64_t c2 = 2 * nchan
    try:
        with nogil:
            for i in range(h):
                if nchan == 1:
                    row = &src[0, i, 0]
                    mn = mins[0]
                    f = factors[0]
                    for j in range(w):
                        out[_level1(row[j], mn, f)] += 1
                    continue
                for j in range(w):
                    sums[j] = 0
                for k in range(nchan):
                    row = &src[k, i, 0]
                    mn = mins[k]
                    f = factors[k]
                    for j in range(w):
                        sums[j] += _level1(row[j], mn, f)
                for j in range(w):
                    out[(2 * sums[j] + nchan) // c2] += 1
    finally:
        free(sums)


# ----------------------------------------------------------------------------------------------
# stiff_chunk: exact median and upper quantile of the finite values of a chunk
# ----------------------------------------------------------------------------------------------

# A float32's bits u map to a key that orders as the numbers do (negative: ~u; positive:
# u | 2**31): the finite values are the keys [KEY_LO, KEY_HI], NaN and infinities lie outside,
# and the k-th smallest finite value is the k-th smallest key in that range.
#
# Selection is guided by a sample: the sorted keys of 1024 values taken at a regular stride
# give an interval around each wanted rank (the sample's rank +- 3 standard deviations, and
# everything above the top's lower bound), then one pass over the chunk counts the keys below
# each interval and copies the keys inside it. When the counts show that each wanted rank
# falls inside its interval, it is selected among the copied keys; otherwise the pass is done
# again with the interval of every finite value. Either way the result is exact: the sample
# only decides how much is copied. Selection among copied keys is a radix selection: a
# histogram of their top 16 bits finds the bucket of each rank, the keys of those buckets are
# packed at the front, and a histogram of their low 16 bits gives each key.
cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <stdlib.h>
    #define IIPY_NB 65536
    #define IIPY_KEY_LO 0x00800000u
    #define IIPY_KEY_HI 0xff7fffffu
    #define IIPY_SAMPLE 1024

    static inline uint32_t iipy_key(uint32_t u)
    {
        return u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
    }

    static inline float iipy_unkey(uint32_t k)
    {
        uint32_t u = (k & 0x80000000u) ? (k ^ 0x80000000u) : ~k;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }

    static inline uint32_t iipy_bits(const uint32_t *u, Py_ssize_t i, int swap)
    {
        uint32_t x = u[i];
        return swap ? __builtin_bswap32(x) : x;
    }

    /* The ranks r[0] <= ... <= r[nr - 1] of the keys k[0..m) (all finite), written to out;
       k is reordered. hist: IIPY_NB counts of scratch. */
    static void iipy_radix_select(uint32_t *k, Py_ssize_t m, const Py_ssize_t *r, int nr,
                                  uint32_t *hist, uint32_t *out)
    {
        uint32_t bucket[4] = {0, 0, 0, 0}, b, b0, b1, b2;
        Py_ssize_t local[4] = {0, 0, 0, 0}, below = 0, p = 0, i, c;
        int j = 0, q;
        uint32_t lo = 0xffffffffu, hi = 0;
        for (i = 0; i < m; i++) {  /* all equal (a flat chunk): nothing to select */
            lo = k[i] < lo ? k[i] : lo;
            hi = k[i] > hi ? k[i] : hi;
        }
        if (lo == hi) {
            for (j = 0; j < nr; j++)
                out[j] = lo;
            return;
        }
        memset(hist, 0, IIPY_NB * sizeof(uint32_t));
        for (i = 0; i < m; i++)
            hist[k[i] >> 16]++;
        for (b = 0; b < IIPY_NB && j < nr; b++) {
            while (j < nr && r[j] < below + (Py_ssize_t)hist[b]) {
                bucket[j] = b;
                local[j] = r[j] - below;
                j++;
            }
            below += hist[b];
        }
        b0 = bucket[0];
        b1 = bucket[nr > 1 ? 1 : 0];
        b2 = bucket[nr > 2 ? 2 : 0];
        for (i = 0; i < m; i++) {  /* branch-free packing of the keys of those buckets */
            uint32_t x = k[i], hb = x >> 16;
            k[p] = x;
            p += (hb == b0) | (hb == b1) | (hb == b2);
        }
        for (j = 0; j < nr; j++) {
            if (j > 0 && bucket[j] == bucket[j - 1])
                continue;
            memset(hist, 0, IIPY_NB * sizeof(uint32_t));
            for (i = 0; i < p; i++)
                hist[k[i] & 0xffffu] += (k[i] >> 16) == bucket[j];
            for (q = j; q < nr && bucket[q] == bucket[j]; q++) {
                c = 0;
                for (b = 0; b < IIPY_NB; b++) {
                    c += hist[b];
                    if (local[q] < c)
                        break;
                }
                out[q] = (bucket[j] << 16) | b;
            }
        }
    }

    typedef struct {
        Py_ssize_t nonfinite, below1, below2, m1, m2;
    } iipy_scan_t;

    /* One pass: keys in [lo1, hi1] copied to k1 (room for n), and if use2 keys in
       [lo2, KEY_HI] to k2 (room for cap2; returns 0 if that is not enough); counts of the
       finite keys below lo1 and lo2 and of the non-finite values. lo1, lo2 >= KEY_LO. */
    static inline int iipy_scan(const uint32_t *u, Py_ssize_t n, int swap, uint32_t lo1,
                                uint32_t hi1, int use2, uint32_t lo2, uint32_t *k1,
                                uint32_t *k2, Py_ssize_t cap2, iipy_scan_t *s)
    {
        Py_ssize_t i = 0, end, neg = 0, pos = 0, b1 = 0, b2 = 0, m1 = 0, m2 = 0;
        const uint32_t w1 = hi1 - lo1, w2 = IIPY_KEY_HI - lo2;
        while (i < n) {
            end = n - i > 4096 ? i + 4096 : n;
            if (use2) {
                if (m2 + (end - i) > cap2)
                    return 0;
                for (; i < end; i++) {
                    uint32_t x = iipy_key(iipy_bits(u, i, swap));
                    neg += x < IIPY_KEY_LO;
                    pos += x > IIPY_KEY_HI;
                    b1 += x < lo1;
                    b2 += x < lo2;
                    k1[m1] = x;
                    m1 += (x - lo1) <= w1;
                    k2[m2] = x;
                    m2 += (x - lo2) <= w2;
                }
            } else {
                for (; i < end; i++) {
                    uint32_t x = iipy_key(iipy_bits(u, i, swap));
                    neg += x < IIPY_KEY_LO;
                    pos += x > IIPY_KEY_HI;
                    b1 += x < lo1;
                    k1[m1] = x;
                    m1 += (x - lo1) <= w1;
                }
            }
        }
        /* the negative non-finite keys lie below every finite one */
        s->nonfinite = neg + pos;
        s->below1 = b1 - neg;
        s->below2 = b2 - neg;
        s->m1 = m1;
        s->m2 = m2;
        return 1;
    }

    /* The same pass with AVX2 where the processor has it (8 keys a step; the keys kept are
       moved to the front of a register by a permutation from a table, then stored whole:
       k1 and k2 need 8 words of room past what they keep). */
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #define IIPY_AVX2 1
    #include <immintrin.h>
    static uint32_t iipy_perm[256][8];
    static int iipy_have_avx2 = -1;

    static int iipy_avx2(void)
    {
        int b, j, m;
        if (iipy_have_avx2 < 0) {
            for (b = 0; b < 256; b++) {
                for (j = 0, m = 0; j < 8; j++)
                    if (b & (1 << j))
                        iipy_perm[b][m++] = j;
                for (; m < 8; m++)
                    iipy_perm[b][m] = 0;
            }
            __builtin_cpu_init();
            iipy_have_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
        }
        return iipy_have_avx2;
    }

    __attribute__((target("avx2,popcnt")))
    static int iipy_scan_avx2(const uint32_t *u, Py_ssize_t n, int swap, uint32_t lo1,
                              uint32_t hi1, int use2, uint32_t lo2, uint32_t *k1, uint32_t *k2,
                              Py_ssize_t cap2, iipy_scan_t *s)
    {
        const __m256i sgn = _mm256_set1_epi32((int)0x80000000u);
        const __m256i rev = _mm256_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13,
                                             12, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14,
                                             13, 12);
        const __m256i klo = _mm256_set1_epi32((int)(IIPY_KEY_LO ^ 0x80000000u));
        const __m256i khi = _mm256_set1_epi32((int)(IIPY_KEY_HI ^ 0x80000000u));
        const __m256i l1 = _mm256_set1_epi32((int)(lo1 ^ 0x80000000u));
        const __m256i h1 = _mm256_set1_epi32((int)(hi1 ^ 0x80000000u));
        const __m256i l2 = _mm256_set1_epi32((int)(lo2 ^ 0x80000000u));
        __m256i neg = _mm256_setzero_si256(), pos = neg, b1 = neg, b2 = neg;
        Py_ssize_t i = 0, end, m1 = 0, m2 = 0, tneg = 0, tpos = 0, tb1 = 0, tb2 = 0;
        uint32_t lanes[8];
        int j;
        while (i + 8 <= n) {
            end = i + ((n - i) / 8 > 512 ? 4096 : ((n - i) / 8) * 8);
            if (use2 && m2 + (end - i) + 8 > cap2)
                return 0;
            for (; i < end; i += 8) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(u + i));
                __m256i k, ks, lt1, in1;
                int bits;
                if (swap)
                    x = _mm256_shuffle_epi8(x, rev);
                k = _mm256_xor_si256(x, _mm256_or_si256(_mm256_srai_epi32(x, 31), sgn));
                ks = _mm256_xor_si256(k, sgn);
                neg = _mm256_sub_epi32(neg, _mm256_cmpgt_epi32(klo, ks));
                pos = _mm256_sub_epi32(pos, _mm256_cmpgt_epi32(ks, khi));
                lt1 = _mm256_cmpgt_epi32(l1, ks);
                b1 = _mm256_sub_epi32(b1, lt1);
                in1 = _mm256_or_si256(lt1, _mm256_cmpgt_epi32(ks, h1));
                bits = 0xff & ~_mm256_movemask_ps(_mm256_castsi256_ps(in1));
                _mm256_storeu_si256((__m256i *)(k1 + m1), _mm256_permutevar8x32_epi32(
                    k, _mm256_loadu_si256((const __m256i *)iipy_perm[bits])));
                m1 += __builtin_popcount(bits);
                if (use2) {
                    __m256i lt2 = _mm256_cmpgt_epi32(l2, ks);
                    b2 = _mm256_sub_epi32(b2, lt2);
                    bits = 0xff & ~_mm256_movemask_ps(_mm256_castsi256_ps(
                        _mm256_or_si256(lt2, _mm256_cmpgt_epi32(ks, khi))));
                    _mm256_storeu_si256((__m256i *)(k2 + m2), _mm256_permutevar8x32_epi32(
                        k, _mm256_loadu_si256((const __m256i *)iipy_perm[bits])));
                    m2 += __builtin_popcount(bits);
                }
            }
        }
        _mm256_storeu_si256((__m256i *)lanes, neg);
        for (j = 0; j < 8; j++) tneg += lanes[j];
        _mm256_storeu_si256((__m256i *)lanes, pos);
        for (j = 0; j < 8; j++) tpos += lanes[j];
        _mm256_storeu_si256((__m256i *)lanes, b1);
        for (j = 0; j < 8; j++) tb1 += lanes[j];
        _mm256_storeu_si256((__m256i *)lanes, b2);
        for (j = 0; j < 8; j++) tb2 += lanes[j];
        for (; i < n; i++) {
            uint32_t x = iipy_key(iipy_bits(u, i, swap));
            tneg += x < IIPY_KEY_LO;
            tpos += x > IIPY_KEY_HI;
            tb1 += x < lo1;
            k1[m1] = x;
            m1 += (x - lo1) <= (hi1 - lo1);
            if (use2) {
                tb2 += x < lo2;
                if (m2 >= cap2)
                    return 0;
                k2[m2] = x;
                m2 += (x - lo2) <= (IIPY_KEY_HI - lo2);
            }
        }
        s->nonfinite = tneg + tpos;
        s->below1 = tb1 - tneg;
        s->below2 = tb2 - tneg;
        s->m1 = m1;
        s->m2 = m2;
        return 1;
    }
    #else
    #define IIPY_AVX2 0
    static int iipy_avx2(void) { return 0; }
    #endif

    /* 0: plain C passes only (for the tests of both paths); 1: AVX2 where available. */
    static int iipy_simd = 1;

    static inline int iipy_scan_any(const uint32_t *u, Py_ssize_t n, int swap, uint32_t lo1,
                                    uint32_t hi1, int use2, uint32_t lo2, uint32_t *k1,
                                    uint32_t *k2, Py_ssize_t cap2, iipy_scan_t *s)
    {
    #if IIPY_AVX2
        if (iipy_simd && iipy_avx2())
            return iipy_scan_avx2(u, n, swap, lo1, hi1, use2, lo2, k1, k2, cap2, s);
    #endif
        return iipy_scan(u, n, swap, lo1, hi1, use2, lo2, k1, k2, cap2, s);
    }

    static int iipy_cmp_u32(const void *a, const void *b)
    {
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
        return (x > y) - (x < y);
    }

    /* Sample bounds: the key of rank p sf -+ (3 sd + 3) of the sorted finite sample keys
       (KEY_LO, KEY_HI past either end). */
    static void iipy_bounds(const uint32_t *sk, Py_ssize_t sf, double p, uint32_t *lo,
                            uint32_t *hi)
    {
        double d = 3.0 * sqrt((double)sf * p * (1.0 - p)) + 3.0;
        double a = p * (double)sf - d, b = p * (double)sf + d;
        *lo = a < 0.0 ? IIPY_KEY_LO : sk[(Py_ssize_t)a];
        *hi = b >= (double)(sf - 1) ? IIPY_KEY_HI : sk[(Py_ssize_t)b];
    }

    /* Count, median keys and top key (see stiff_chunk) of the n float32 values at u (bytes
       reversed if swap). k1: room for n keys, k2: for cap2; hist: IIPY_NB counts. guess: use
       the sample. Returns the number of finite values; used_sample tells whether the sample's
       intervals held the ranks. */
    static Py_ssize_t iipy_stiff_chunk(const uint32_t *u, Py_ssize_t n, int swap, double level,
                                       int guess, uint32_t *k1, uint32_t *k2, Py_ssize_t cap2,
                                       uint32_t *hist, uint32_t *keys, int *used_sample)
    {
        uint32_t lo1 = IIPY_KEY_LO, hi1 = IIPY_KEY_HI, lo2 = IIPY_KEY_HI, x;
        uint32_t sk[IIPY_SAMPLE];
        Py_ssize_t sf = 0, i, stride, cnt, half, top_k, r[3];
        int nr, ok = 0, j;
        iipy_scan_t s;
        *used_sample = 0;
        if (guess && n >= 16 * IIPY_SAMPLE) {
            stride = n / IIPY_SAMPLE;
            for (i = 0; i < IIPY_SAMPLE; i++) {
                x = iipy_key(iipy_bits(u, i * stride + stride / 2, swap));
                if (x - IIPY_KEY_LO <= IIPY_KEY_HI - IIPY_KEY_LO)
                    sk[sf++] = x;
            }
            if (sf >= IIPY_SAMPLE / 2) {
                uint32_t unused;
                qsort(sk, sf, sizeof(uint32_t), iipy_cmp_u32);
                iipy_bounds(sk, sf, 0.5, &lo1, &hi1);
                iipy_bounds(sk, sf, 0.5 + 0.5 * level, &lo2, &unused);
                ok = iipy_scan_any(u, n, swap, lo1, hi1, 1, lo2, k1, k2, cap2, &s);
            }
        }
        if (!ok)
            iipy_scan_any(u, n, swap, IIPY_KEY_LO, IIPY_KEY_HI, 0, 0, k1, k2, 0, &s);
        cnt = n - s.nonfinite;
        if (cnt == 0)
            return 0;
        half = cnt / 2;
        top_k = half + (cnt % 2) + (Py_ssize_t)(level * ((double)half - 0.5001));
        if (top_k > cnt - 1)
            top_k = cnt - 1;
        nr = 0;
        if (cnt % 2 == 0)
            r[nr++] = half - 1;
        r[nr++] = half;
        r[nr++] = top_k;
        if (ok) {
            for (j = 0; j < nr - 1; j++)
                ok &= r[j] >= s.below1 && r[j] < s.below1 + s.m1;
            ok &= top_k >= s.below2 && top_k < s.below2 + s.m2;
            if (ok) {
                for (j = 0; j < nr - 1; j++)
                    r[j] -= s.below1;
                iipy_radix_select(k1, s.m1, r, nr - 1, hist, keys);
                top_k -= s.below2;
                iipy_radix_select(k2, s.m2, &top_k, 1, hist, keys + nr - 1);
                *used_sample = 1;
                return cnt;
            }
            iipy_scan_any(u, n, swap, IIPY_KEY_LO, IIPY_KEY_HI, 0, 0, k1, k2, 0, &s);
        }
        /* every finite key is in k1 */
        iipy_radix_select(k1, s.m1, r, nr, hist, keys);
        return cnt;
    }
    """
    Py_ssize_t _stiff_chunk "iipy_stiff_chunk" (const uint32_t* u, Py_ssize_t n, int swap,
                                                double level, int guess, uint32_t* k1,
                                                uint32_t* k2, Py_ssize_t cap2, uint32_t* hist,
                                                uint32_t* keys, int* used_sample) noexcept nogil
    float _unkey "iipy_unkey" (uint32_t k) noexcept nogil
    int _simd "iipy_simd"
    int _have_avx2 "iipy_avx2" () noexcept nogil


def set_simd(bint on):
    """Use the AVX2 passes where the processor has them (the default), or plain C only;
    returns whether AVX2 is now in use."""
    global _simd
    _simd = 1 if on else 0
    return bool(on and _have_avx2())


def stiff_chunk(const uint8_t[::1] raw, bint swap, double level, bint guess,
                uint32_t[::1] scratch):
    """(n, sky, top, sampled) of the finite values among the float32 samples in ``raw``
    (native, or bytes reversed if ``swap``; not modified): n their number; sky their median
    (the mean, in double, of the two central values for an even n); top the value of index
    n//2 + n%2 + int(level (n//2 - 0.5001)), at most n - 1, of their sorted list; sampled
    whether the sample's intervals held the ranks (``guess``: try them). n = 0 gives NaN for
    both. scratch: at least 65536 + 9 len(raw) / 32 + 16 words."""
    cdef Py_ssize_t n = raw.shape[0] // 4
    if raw.shape[0] % 4:
        raise ValueError("raw is not a whole number of float32 samples")
    if not 0.0 <= level <= 1.0:
        raise ValueError("level must be in [0, 1]")
    cdef Py_ssize_t cap2 = n // 8 + 16
    if scratch.shape[0] < 65536 + n + cap2:
        raise ValueError("scratch is too short")
    if n == 0:
        return 0, float("nan"), float("nan"), False
    cdef uint32_t* hist = &scratch[0]
    cdef uint32_t* k1 = hist + 65536
    cdef uint32_t* k2 = k1 + n
    cdef uint32_t keys[3]
    cdef int sampled = 0
    cdef Py_ssize_t cnt
    cdef double sky = 0, top = 0
    with nogil:
        cnt = _stiff_chunk(<const uint32_t*>&raw[0], n, swap, level, guess, k1, k2, cap2,
                           hist, keys, &sampled)
        if cnt % 2:
            sky = _unkey(keys[0])
            top = _unkey(keys[1])
        elif cnt:
            sky = (<double>_unkey(keys[0]) + <double>_unkey(keys[1])) / 2.0
            top = _unkey(keys[2])
    if cnt == 0:
        return 0, float("nan"), float("nan"), False
    return cnt, sky, top, bool(sampled)
