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
    cdef const float* r0
    cdef const float* r1
    cdef const char* c0
    cdef const char* c1
    cdef float* o
    cdef float a, b, c, d, s, n
    with nogil:
        for i in range(oh):
            o = &out[i, 0]
            if s1 == <Py_ssize_t>sizeof(float):
                r0 = <const float*>(base + (2 * i) * s0)
                r1 = <const float*>(base + (2 * i + 1) * s0)
                for j in range(ow):
                    a = r0[2 * j]
                    b = r0[2 * j + 1]
                    c = r1[2 * j]
                    d = r1[2 * j + 1]
                    s = ((a if _finite(a) else 0) + (b if _finite(b) else 0)
                         + (c if _finite(c) else 0) + (d if _finite(d) else 0))
                    n = (<float>_finite(a) + <float>_finite(b) + <float>_finite(c)
                         + <float>_finite(d))
                    o[j] = s / n
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
    cdef Py_ssize_t ncomp = 1 if (nchan <= 2 or cmap != CM_NONE) else 3
    cdef Py_ssize_t nout = 3 if (cmap != CM_NONE or nchan >= 3) else 1
    cdef Py_ssize_t nrows = ctw.shape[0], ncols = ctw.shape[1]
    cdef Py_ssize_t nin = ncols if ncols < nchan else nchan
    cdef Py_ssize_t kmix = nrows if nrows < ncomp else ncomp
    cdef bint use_lut = use_gamma and lut_hi > lut_lo
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
        return
    if not has_ctw:
        nin = 0
        kmix = 0
    # Work rows: normalised inputs read by the CTW (nin rows), then 3 component rows.
    cdef Py_ssize_t nwork = nin + 3
    cdef float* work = <float*>malloc((nwork * w + 1) * sizeof(float))
    cdef unsigned char* need = <unsigned char*>malloc(nin + 1)
    if work == NULL or need == NULL:
        free(work)
        free(need)
        raise MemoryError()
    cdef float* nrm = work
    cdef float* comp[3]
    cdef Py_ssize_t i, j, k
    cdef const float* lutp = &lut[0]
    cdef unsigned char* orow
    cdef bint simple_grey = (ncomp == 1 and not has_ctw and not use_gamma
                             and cmap == CM_NONE)
    for k in range(3):
        comp[k] = work + (nin + k) * w
    # Input channels that some used CTW row reads with a non-zero coefficient.
    for j in range(nin):
        need[j] = 0
        for k in range(kmix):
            if ctw[k, j] != 0:
                need[j] = 1
    try:
        with nogil:
            for i in range(h):
                orow = &out[i, 0]
                if simple_grey:
                    _grey_row(&src[0, i, 0], w, mins[0], factors[0], invert, contrast, orow)
                    continue
                # 1. normalise, 2. CTW; 3. band flattening = computing ncomp components only
                if has_ctw:
                    for j in range(nin):
                        if need[j]:
                            _norm_row(&src[j, i, 0], w, mins[j], factors[j], nrm + j * w)
                    for k in range(ncomp):
                        if k < kmix:
                            _mix_row(nrm, w, &ctw[k, 0], nin, w, comp[k])
                        else:
                            for j in range(w):
                                comp[k][j] = 0
                else:
                    for k in range(ncomp):
                        _norm_row(&src[k, i, 0], w, mins[k], factors[k], comp[k])
                # 4. GAM, 5. INV
                for k in range(ncomp):
                    if use_gamma:
                        _stretch_row(comp[k], w, stretch, gamma, p0, p1, lutp, lut_lo, lut_hi,
                                     use_lut, invert)
                    elif invert:
                        _invert_row(comp[k], w)
                # 6. CMP, 7. quantise with CNT
                if cmap != CM_NONE:
                    _cmap_row(comp[0], w, cmap, contrast, orow)
                elif ncomp == 3:
                    _rgb_row(comp[0], comp[1], comp[2], w, contrast, orow)
                else:
                    _quant_row(comp[0], w, contrast, orow)
    finally:
        free(work)
        free(need)


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
