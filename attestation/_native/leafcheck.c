/*
 * attestation._leafcheck: check a whole window of leaves and compute its RFC 9162 root in C.
 *
 * Why this exists (docs/adr/0007-native-window-check.md): the hub checks every uploaded
 * leaf before it accepts a window. In Python that costs ~5 us a leaf (cbor2 decode, the
 * re-encode that proves deterministic form, two SHA-256 calls), which caps one core at
 * ~100-200 windows of 1,000 readings a second. No maintained library validates *our* leaf
 * schema in deterministic CBOR, so this file does exactly that; and, for the agent's sealer,
 * writes a window's leaves and its proof's statistics map (stats_map, encode_leaves near the
 * end, ADR 0049).
 *
 * The contract is narrow and checked by tests: check_window() (a list of leaves) and
 * check_sequence() (the leaves back to back in one byte string, as uploads carry them and
 * the hub stores them) accept a leaf exactly when attestation.reading.decode_leaf() accepts
 * it and its seq is the expected one (tests/unit/test_leafcheck_native.py, Hypothesis, plus
 * a differential fuzz target). On the first leaf they do not accept they return that leaf's
 * index; the Python caller then decodes it to name what is wrong. They never allocate per
 * leaf and never read past the input's end.
 *
 * A canonical leaf (RFC 8949 s.4.2.1, our map {1: seq, 2: ts_ns, 3: signal, 4: value,
 * 5: unit, 6: quality}) is: a6 | 01 uint | 02 int | 03 text | 04 float or text | 05 text |
 * 06 uint, every head in its shortest form, the float in the shortest IEEE 754 width that
 * keeps its value, NaN only as f9 7e00, text valid UTF-8 (a text value, such as an OPC UA
 * String, is bounded only by the leaf size, as in Python).
 *
 * The file's second job, decode_plain() near its end (ADR 0012), is the fast path of
 * attestation.cborsafe.loads: plain CBOR items decoded as cbor2 decodes them, anything else
 * handed back to cbor2.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define OPENSSL_API_COMPAT 0x10100000L
#include <openssl/sha.h>

typedef struct {
    unsigned long long max_quality;
    Py_ssize_t max_leaf, max_signal, max_unit;
} Limits;

/* A CBOR head of major type `major` in shortest form at p[0..n). Returns its length, 0 if bad. */
static Py_ssize_t head(const unsigned char *p, Py_ssize_t n, int major, uint64_t *arg)
{
    if (n < 1 || (p[0] >> 5) != major)
        return 0;
    unsigned ai = p[0] & 31u;
    if (ai < 24) {
        *arg = ai;
        return 1;
    }
    int len = ai == 24 ? 1 : ai == 25 ? 2 : ai == 26 ? 4 : ai == 27 ? 8 : 0;
    if (len == 0 || n < 1 + len)
        return 0; /* reserved, indefinite length, or truncated */
    uint64_t v = 0;
    for (int i = 1; i <= len; i++)
        v = (v << 8) | p[i];
    static const uint64_t smallest[9] = {0, 24, 0x100, 0, 0x10000, 0, 0, 0, 0x100000000ULL};
    if (v < smallest[len])
        return 0; /* a shorter head would do: not deterministic */
    *arg = v;
    return 1 + len;
}

/* Code points in strict UTF-8 (what Python's decoder accepts), or -1. */
static Py_ssize_t utf8_chars(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0, chars = 0;
    while (i < n) {
        unsigned c = s[i], cp;
        int more;
        if (c < 0x80) {
            i++;
            chars++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
            cp = c & 0x1F;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            cp = c & 0x0F;
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            cp = c & 0x07;
        }
        else
            return -1;
        if (n - i <= more)
            return -1;
        for (int j = 1; j <= more; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return -1;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((more == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (more == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return -1; /* overlong, surrogate or beyond Unicode */
        i += more + 1;
        chars++;
    }
    return chars;
}

/* A text string of min..max code points; its length, 0 if bad. */
static Py_ssize_t text(const unsigned char *p, Py_ssize_t n, Py_ssize_t min, Py_ssize_t max)
{
    uint64_t len;
    Py_ssize_t h = head(p, n, 3, &len);
    if (h == 0 || len > (uint64_t)(n - h))
        return 0;
    Py_ssize_t chars = utf8_chars(p + h, (Py_ssize_t)len);
    if (chars < min || chars > max)
        return 0;
    return h + (Py_ssize_t)len;
}

static int half_is_nan(unsigned h) /* binary16: exponent all ones, mantissa not zero */
{
    return ((h >> 10) & 0x1F) == 31 && (h & 0x3FF) != 0;
}

static int fits_half(double x) /* exactly representable as IEEE 754 binary16 */
{
    double a = fabs(x);
    if (isinf(a) || a == 0.0)
        return 1;
    if (a > 65504.0)
        return 0;
    if (a < 0x1p-14) { /* subnormal: a multiple of 2^-24 */
        double k = ldexp(a, 24);
        return k == floor(k);
    }
    int e;
    double m = ldexp(frexp(a, &e), 11); /* 11 significant bits */
    return m == floor(m);
}

static int fits_single(double x)
{
    if (isinf(x))
        return 1;
    if (fabs(x) > FLT_MAX)
        return 0;
    return (double)(float)x == x;
}

static uint64_t be(const unsigned char *p, int len)
{
    uint64_t v = 0;
    for (int i = 0; i < len; i++)
        v = (v << 8) | p[i];
    return v;
}

/* A float in its deterministic width, or a text string; its length, 0 if bad. */
static Py_ssize_t value(const unsigned char *p, Py_ssize_t n)
{
    if (n >= 1 && (p[0] >> 5) == 3)
        return text(p, n, 0, PY_SSIZE_T_MAX);
    if (n >= 3 && p[0] == 0xF9) {
        unsigned h = (unsigned)be(p + 1, 2);
        return half_is_nan(h) && h != 0x7E00 ? 0 : 3;
    }
    if (n >= 5 && p[0] == 0xFA) {
        uint32_t bits = (uint32_t)be(p + 1, 4);
        float f;
        memcpy(&f, &bits, 4);
        return isnan(f) || fits_half(f) ? 0 : 5;
    }
    if (n >= 9 && p[0] == 0xFB) {
        uint64_t bits = be(p + 1, 8);
        double d;
        memcpy(&d, &bits, 8);
        return isnan(d) || fits_single(d) ? 0 : 9;
    }
    return 0;
}

/* The length of the canonical leaf with seq `want` that starts p[0..n), 0 if none does.
   A leaf is self-delimiting, so this also splits a CBOR sequence of leaves. */
static Py_ssize_t leaf_len(const unsigned char *p, Py_ssize_t n, uint64_t want, const Limits *lim)
{
    const unsigned char *start = p, *end = p + (n < lim->max_leaf ? n : lim->max_leaf);
    uint64_t v;
    Py_ssize_t k;
    if (end - p < 2 || p[0] != 0xA6 || p[1] != 0x01)
        return 0;
    p += 2;
    if (!(k = head(p, end - p, 0, &v)) || v != want || v >= (1ULL << 63))
        return 0;
    p += k;
    if (p >= end || *p++ != 0x02)
        return 0;
    k = head(p, end - p, 0, &v); /* ts_ns >= 0 */
    if (!k)
        k = head(p, end - p, 1, &v); /* ts_ns = -1 - v < 0 */
    if (!k || v >= (1ULL << 63))
        return 0;
    p += k;
    if (p >= end || *p++ != 0x03 || !(k = text(p, end - p, 1, lim->max_signal)))
        return 0;
    p += k;
    if (p >= end || *p++ != 0x04 || !(k = value(p, end - p)))
        return 0;
    p += k;
    if (p >= end || *p++ != 0x05 || !(k = text(p, end - p, 0, lim->max_unit)))
        return 0;
    p += k;
    if (p >= end || *p++ != 0x06 || !(k = head(p, end - p, 0, &v)) || v > lim->max_quality)
        return 0;
    return (p + k) - start;
}

/* ---- SHA-256 of the tree's nodes, several at a time ----
   Every node of a level is independent of the others, so the tree hashes them in groups
   (docs/adr/0011-interleaved-sha256.md). Of those the CPU runs, the fastest at import is
   used (calibrate(), below):
   - "avx512": sixteen messages at once, one in each 32-bit lane of AVX-512 registers (the
     FIPS 180-4 rounds written with vector rotates and three-input logic), ~2.7x OpenSSL on
     65-byte nodes;
   - "sha-ni": four at once with the x86 SHA extensions, their rounds interleaved so that each
     stream's SHA256RNDS2 latency hides behind the others', ~1.6x OpenSSL;
   - "openssl": one at a time, anywhere.
   use_backend() switches for tests and benchmarks; tests compare every backend with hashlib. */

typedef struct {
    const unsigned char *data; /* the message is prefix || data[0..len) */
    size_t len;
    unsigned char *out; /* 32 bytes; written only after every message of the group is read */
} Msg;

enum { LANES = 4, WIDE = 16 }; /* messages a call of hash_shani / hash_avx512 takes */
typedef void (*HashFn)(unsigned char prefix, const Msg *m, int k);

static void hash_openssl(unsigned char prefix, const Msg *m, int k)
{
    for (int i = 0; i < k; i++) {
        SHA256_CTX c; /* not SHA256(): in OpenSSL 3 it fetches the algorithm each call */
        SHA256_Init(&c);
        SHA256_Update(&c, &prefix, 1);
        SHA256_Update(&c, m[i].data, m[i].len);
        SHA256_Final(m[i].out, &c);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>

#define SHA_TARGET __attribute__((target("sha,sse4.1,ssse3")))

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t H256[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

/* Blocks of the padded message prefix || data[0..len): its bytes, 0x80, the 8-byte length. */
static size_t padded_blocks(size_t len) { return (1 + len + 8) / 64 + 1; }

static int cpu_has_sha(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1))
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b >> 29) & 1u; /* CPUID.(EAX=7,ECX=0):EBX.SHA */
}

/* Block b (64 bytes) of the padded message prefix || data[0..len) (FIPS 180-4 s.5.1.1). */
static void block_at(unsigned char prefix, const Msg *m, size_t b, size_t blocks,
                     unsigned char blk[64])
{
    size_t total = 1 + m->len, start = 64 * b, lo = start, hi = start + 64;
    memset(blk, 0, 64);
    if (lo == 0) {
        blk[0] = prefix;
        lo = 1;
    }
    if (lo < total)
        memcpy(blk + (lo - start), m->data + (lo - 1), (total < hi ? total : hi) - lo);
    if (total >= start && total < hi)
        blk[total - start] = 0x80;
    if (b + 1 == blocks) {
        uint64_t bits = 8 * (uint64_t)total;
        for (int i = 0; i < 8; i++)
            blk[63 - i] = (unsigned char)(bits >> (8 * i));
    }
}

/* One block into each lane's state, the lanes' rounds interleaved. The state is held as
   the SHA instructions want it: abef = (a, b, e, f), cdgh = (c, d, g, h), high lane first. */
SHA_TARGET static void compress_lanes(__m128i *abef, __m128i *cdgh, unsigned char blk[][64])
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i x[LANES], y[LANES], w[LANES][4];
    /* fully unrolled, so that w[n][j % 4] are registers, not memory (-O2 would not) */
#pragma GCC unroll 4
    for (int n = 0; n < LANES; n++) {
        x[n] = abef[n];
        y[n] = cdgh[n];
        for (int j = 0; j < 4; j++)
            w[n][j] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(blk[n] + 16 * j)), bswap);
    }
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) { /* four rounds of every lane a step */
        __m128i k = _mm_loadu_si128((const __m128i *)(K256 + 4 * j));
#pragma GCC unroll 4
        for (int n = 0; n < LANES; n++) {
            __m128i *v = w[n];
            if (j >= 4) /* message schedule: W[t] from W[t-16], W[t-15], W[t-7], W[t-2] */
                v[j % 4] = _mm_sha256msg2_epu32(
                    _mm_add_epi32(_mm_sha256msg1_epu32(v[j % 4], v[(j + 1) % 4]),
                                  _mm_alignr_epi8(v[(j + 3) % 4], v[(j + 2) % 4], 4)),
                    v[(j + 3) % 4]);
            __m128i wk = _mm_add_epi32(v[j % 4], k);
            y[n] = _mm_sha256rnds2_epu32(y[n], x[n], wk);
            x[n] = _mm_sha256rnds2_epu32(x[n], y[n], _mm_shuffle_epi32(wk, 0x0E));
        }
    }
    for (int n = 0; n < LANES; n++) {
        abef[n] = _mm_add_epi32(abef[n], x[n]);
        cdgh[n] = _mm_add_epi32(cdgh[n], y[n]);
    }
}

/* k <= LANES messages at once; unused lanes repeat message 0 and are dropped. */
SHA_TARGET static void hash_shani(unsigned char prefix, const Msg *m, int k)
{
    const __m128i rev = _mm_set_epi64x(0x0001020304050607ULL, 0x08090a0b0c0d0e0fULL);
    __m128i abef[LANES], cdgh[LANES];
    unsigned char blk[LANES][64];
    size_t blocks[LANES], most = 0;
    for (int n = 0; n < LANES; n++) {
        blocks[n] = padded_blocks(m[n < k ? n : 0].len);
        most = blocks[n] > most ? blocks[n] : most;
        abef[n] = _mm_set_epi32((int)H256[0], (int)H256[1], (int)H256[4], (int)H256[5]);
        cdgh[n] = _mm_set_epi32((int)H256[2], (int)H256[3], (int)H256[6], (int)H256[7]);
    }
    for (size_t b = 0; b < most; b++) {
        __m128i keep[LANES][2]; /* a lane whose message ended keeps its state */
        for (int n = 0; n < LANES; n++) {
            keep[n][0] = abef[n];
            keep[n][1] = cdgh[n];
            if (b < blocks[n])
                block_at(prefix, &m[n < k ? n : 0], b, blocks[n], blk[n]);
        }
        compress_lanes(abef, cdgh, blk);
        for (int n = 0; n < LANES; n++)
            if (b >= blocks[n]) {
                abef[n] = keep[n][0];
                cdgh[n] = keep[n][1];
            }
    }
    for (int n = 0; n < k; n++) { /* digest = a..h big-endian */
        __m128i abcd = _mm_unpackhi_epi64(cdgh[n], abef[n]), efgh = _mm_unpacklo_epi64(cdgh[n], abef[n]);
        _mm_storeu_si128((__m128i *)m[n].out, _mm_shuffle_epi8(abcd, rev));
        _mm_storeu_si128((__m128i *)(m[n].out + 16), _mm_shuffle_epi8(efgh, rev));
    }
}

#define AVX512_TARGET __attribute__((target("avx512f,avx512bw")))

static int cpu_has_avx512(void)
{
    __builtin_cpu_init(); /* libgcc also checks that the OS saves the AVX-512 state */
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

#define BSWAP32 _mm512_set4_epi32(0x0c0d0e0f, 0x08090a0b, 0x04050607, 0x00010203)

/* r[i] = row i of a 16 x 16 matrix of 32-bit words, turned into its columns in registers:
   pairs of rows interleaved by words, then by double words (within each 128-bit lane), then
   the lanes gathered by two rounds of lane shuffles. Whole blocks loaded and transposed, and
   the digests transposed back and stored 32 bytes a lane, in place of a gather a word in and
   a 32-bit store a word out: a 1,000-leaf window's check 89.6-92.1 -> 86.2-88.3 µs here. */
AVX512_TARGET static void transpose16(__m512i r[16])
{
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* u[i + k], 128-bit lane L: column 4L + k, rows i.. */
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int k = 0; k < 4; k++) { /* 0x88: lanes 0, 2 of each source; 0xDD: lanes 1, 3 */
        __m512i p = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x88);
        __m512i q = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xDD);
        __m512i p2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x88);
        __m512i q2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xDD);
        r[k] = _mm512_shuffle_i32x4(p, p2, 0x88);
        r[8 + k] = _mm512_shuffle_i32x4(p, p2, 0xDD);
        r[4 + k] = _mm512_shuffle_i32x4(q, q2, 0x88);
        r[12 + k] = _mm512_shuffle_i32x4(q, q2, 0xDD);
    }
}

/* One block into each live lane's state: s[0..7] hold a..h, lane n the message n. */
AVX512_TARGET static void compress_wide(__m512i *s, unsigned char blk[][64], __mmask16 live)
{
    __m512i w[16];
    for (int n = 0; n < WIDE; n++) /* whole blocks, then word j of every lane, big-endian */
        w[n] = _mm512_loadu_si512(blk[n]);
    transpose16(w);
    for (int j = 0; j < 16; j++)
        w[j] = _mm512_shuffle_epi8(w[j], BSWAP32);
    __m512i a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
#pragma GCC unroll 64
    for (int t = 0; t < 64; t++) { /* FIPS 180-4 s.6.2.2; 0x96 = x^y^z, 0xCA = ch, 0xE8 = maj */
        if (t >= 16) {
            __m512i w15 = w[(t - 15) & 15], w2 = w[(t - 2) & 15];
            __m512i s0 = _mm512_ternarylogic_epi32(_mm512_ror_epi32(w15, 7),
                                                   _mm512_ror_epi32(w15, 18),
                                                   _mm512_srli_epi32(w15, 3), 0x96);
            __m512i s1 = _mm512_ternarylogic_epi32(_mm512_ror_epi32(w2, 17),
                                                   _mm512_ror_epi32(w2, 19),
                                                   _mm512_srli_epi32(w2, 10), 0x96);
            w[t & 15] = _mm512_add_epi32(_mm512_add_epi32(w[t & 15], s0),
                                         _mm512_add_epi32(w[(t - 7) & 15], s1));
        }
        __m512i big1 = _mm512_ternarylogic_epi32(_mm512_ror_epi32(e, 6), _mm512_ror_epi32(e, 11),
                                                 _mm512_ror_epi32(e, 25), 0x96);
        __m512i t1 = _mm512_add_epi32(
            _mm512_add_epi32(h, big1),
            _mm512_add_epi32(_mm512_ternarylogic_epi32(e, f, g, 0xCA),
                             _mm512_add_epi32(w[t & 15], _mm512_set1_epi32((int)K256[t]))));
        __m512i big0 = _mm512_ternarylogic_epi32(_mm512_ror_epi32(a, 2), _mm512_ror_epi32(a, 13),
                                                 _mm512_ror_epi32(a, 22), 0x96);
        __m512i t2 = _mm512_add_epi32(big0, _mm512_ternarylogic_epi32(a, b, c, 0xE8));
        h = g;
        g = f;
        f = e;
        e = _mm512_add_epi32(d, t1);
        d = c;
        c = b;
        b = a;
        a = _mm512_add_epi32(t1, t2);
    }
    __m512i x[8] = {a, b, c, d, e, f, g, h};
    for (int i = 0; i < 8; i++) /* a lane whose message has ended keeps its state */
        s[i] = _mm512_mask_add_epi32(s[i], live, s[i], x[i]);
}

static uint64_t low_bits(size_t n) { return n >= 64 ? ~0ULL : (1ULL << n) - 1; }

/* block_at with AVX-512 byte masks: one masked load of the message bytes (a masked-off
   byte is never read, so nothing outside the message is touched), then the prefix, the
   0x80 terminator and the bit length blended in. */
AVX512_TARGET static void block_at_wide(unsigned char prefix, const Msg *m, size_t b,
                                        size_t blocks, unsigned char blk[64])
{
    size_t total = 1 + m->len, start = 64 * b;
    size_t lo = start == 0, hi = total > start ? total - start : 0; /* data bytes [lo, hi) */
    __mmask64 data = (__mmask64)(low_bits(hi) & ~low_bits(lo));
    __m512i v = _mm512_maskz_loadu_epi8(data, (const void *)((uintptr_t)m->data + start - 1));
    if (start == 0)
        v = _mm512_mask_mov_epi8(v, 1, _mm512_set1_epi8((char)prefix));
    if (total >= start && total - start < 64)
        v = _mm512_mask_mov_epi8(v, (__mmask64)1 << (total - start), _mm512_set1_epi8(-128));
    if (b + 1 == blocks) { /* the last 8 bytes: the length in bits, big-endian */
        long long bits = (long long)__builtin_bswap64(8 * (uint64_t)total);
        v = _mm512_mask_mov_epi64(v, 0x80, _mm512_set1_epi64(bits));
    }
    _mm512_storeu_si512(blk, v);
}

/* k <= WIDE messages at once; unused lanes repeat message 0 and are dropped. */
AVX512_TARGET static void hash_avx512(unsigned char prefix, const Msg *m, int k)
{
    unsigned char blk[WIDE][64];
    size_t blocks[WIDE], most = 0;
    __m512i s[8];
    for (int i = 0; i < 8; i++)
        s[i] = _mm512_set1_epi32((int)H256[i]);
    for (int n = 0; n < WIDE; n++) {
        blocks[n] = padded_blocks(m[n < k ? n : 0].len);
        most = blocks[n] > most ? blocks[n] : most;
    }
    for (size_t b = 0; b < most; b++) {
        __mmask16 live = 0;
        for (int n = 0; n < WIDE; n++)
            if (b < blocks[n]) {
                block_at_wide(prefix, &m[n < k ? n : 0], b, blocks[n], blk[n]);
                live |= (__mmask16)(1u << n);
            }
        compress_wide(s, blk, live);
    }
    __m512i d[16]; /* digest = a..h big-endian: lane n's, the first 8 words of d[n] */
    for (int i = 0; i < 16; i++)
        d[i] = i < 8 ? _mm512_shuffle_epi8(s[i], BSWAP32) : _mm512_setzero_si512();
    transpose16(d);
    for (int n = 0; n < k; n++)
        _mm256_storeu_si256((__m256i *)m[n].out, _mm512_castsi512_si256(d[n]));
}
#define HAVE_X86_BACKENDS 1
#endif

static int always(void) { return 1; }

typedef struct {
    const char *name;
    HashFn hash;
    int lanes; /* messages a call takes */
    int (*available)(void);
} Backend;

static const Backend BACKENDS[] = { /* the order backends() lists them in */
#ifdef HAVE_X86_BACKENDS
    {"avx512", hash_avx512, WIDE, cpu_has_avx512},
    {"sha-ni", hash_shani, LANES, cpu_has_sha},
#endif
    {"openssl", hash_openssl, LANES, always},
};
enum { N_BACKENDS = sizeof(BACKENDS) / sizeof(BACKENDS[0]) };
static const Backend *backend_in_use = &BACKENDS[N_BACKENDS - 1];
static double calibrated_ns[N_BACKENDS]; /* each backend's time on the calibration tree */

/* The RFC 9162 root of n >= 1 leaves (leaf i at ptr[i], len[i] bytes) into out[32].
   `level` is scratch of n * 32 bytes. Runs without the GIL: it touches no Python object. */
static void merkle_root(const unsigned char *const *ptr, const Py_ssize_t *len, Py_ssize_t n,
                        unsigned char *level, unsigned char *out)
{
    HashFn hash = backend_in_use->hash;
    int lanes = backend_in_use->lanes;
    Msg group[WIDE];
    int k = 0;
    for (Py_ssize_t i = 0; i < n; i++) { /* leaf hashes: SHA-256(0x00 || leaf) */
        group[k++] = (Msg){ptr[i], (size_t)len[i], level + 32 * i};
        if (k == lanes || i + 1 == n) {
            hash(0x00, group, k);
            k = 0;
        }
    }
    /* pair neighbours level by level, carrying an odd last node up: RFC 9162 s.2.1.1's tree.
       Node i/2 of the next level overwrites only nodes its group has already read. */
    for (Py_ssize_t width = n; width > 1; width = (width + 1) / 2) {
        for (Py_ssize_t i = 0; i + 1 < width; i += 2) {
            group[k++] = (Msg){level + 32 * i, 64, level + 32 * (i / 2)};
            if (k == lanes || i + 3 >= width) { /* a full group, or the level's last pair */
                hash(0x01, group, k);
                k = 0;
            }
        }
        if (width % 2)
            memmove(level + 32 * (width / 2), level + 32 * (width - 1), 32);
    }
    memcpy(out, level, 32);
}

/* Pick the backend that hashes fastest on this CPU, as Linux picks its RAID xor and raid6
   code at boot: each backend that runs here roots the same tree (CAL_LEAVES leaves the size of
   a reading, so ~3 compressions a leaf as in a window), best of CAL_ROUNDS rounds, the rounds
   interleaved so that a clock that ramps up favours none. The order of preference is not the
   order of speed on every CPU: on an AMD EPYC with both, "sha-ni" rooted a window of 1,000
   readings in ~106 us and "avx512" in ~119 (docs/performance.md). ~0.3 ms, once, at import. */
enum { CAL_LEAVES = 256, CAL_LEAF = 28, CAL_ROUNDS = 5 };

static double monotonic_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return 1e9 * (double)t.tv_sec + (double)t.tv_nsec;
}

static void calibrate(void)
{
    static unsigned char data[CAL_LEAVES * CAL_LEAF], level[CAL_LEAVES * 32];
    static const unsigned char *ptr[CAL_LEAVES];
    static Py_ssize_t len[CAL_LEAVES];
    unsigned char root[32];
    for (int i = 0; i < CAL_LEAVES * CAL_LEAF; i++)
        data[i] = (unsigned char)(i * 131 + 7);
    for (int i = 0; i < CAL_LEAVES; i++) {
        ptr[i] = data + i * CAL_LEAF;
        len[i] = CAL_LEAF;
    }
    for (int b = 0; b < N_BACKENDS; b++)
        calibrated_ns[b] = BACKENDS[b].available() ? 1e300 : -1.0; /* -1: not on this CPU */
    for (int round = 0; round < CAL_ROUNDS; round++)
        for (int b = 0; b < N_BACKENDS; b++) {
            if (calibrated_ns[b] < 0)
                continue;
            backend_in_use = &BACKENDS[b];
            double start = monotonic_ns();
            merkle_root(ptr, len, CAL_LEAVES, level, root);
            double took = monotonic_ns() - start;
            if (took < calibrated_ns[b])
                calibrated_ns[b] = took;
        }
    for (int b = 0; b < N_BACKENDS; b++) /* the fastest; on a tie the one listed first */
        if (calibrated_ns[b] >= 0 && calibrated_ns[b] < calibrated_ns[backend_in_use - BACKENDS])
            backend_in_use = &BACKENDS[b];
}

/* Scratch for n leaves: pointers, lengths and one Merkle level, in one allocation. */
typedef struct {
    const unsigned char **ptr;
    Py_ssize_t *len;
    unsigned char *level;
} Scratch;

static int scratch_alloc(Scratch *s, Py_ssize_t n)
{
    size_t each = sizeof(*s->ptr) + sizeof(*s->len) + 32;
    if ((size_t)n > ((size_t)PY_SSIZE_T_MAX) / each)
        return 0;
    char *mem = PyMem_RawMalloc((size_t)n * each);
    if (mem == NULL)
        return 0;
    s->ptr = (const unsigned char **)mem;
    s->len = (Py_ssize_t *)(mem + (size_t)n * sizeof(*s->ptr));
    s->level = (unsigned char *)(mem + (size_t)n * (sizeof(*s->ptr) + sizeof(*s->len)));
    return 1;
}

/* Hash the leaves in `s` without the GIL, free `s`, return the root as bytes. */
static PyObject *finish(Scratch *s, Py_ssize_t n)
{
    unsigned char root[32];
    Py_BEGIN_ALLOW_THREADS
    merkle_root(s->ptr, s->len, n, s->level, root);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(s->ptr);
    return PyBytes_FromStringAndSize((const char *)root, 32);
}

PyDoc_STRVAR(check_window_doc,
"check_window(leaves, first_seq, max_leaf, max_signal, max_unit, max_quality) -> bytes | int\n\n"
"The RFC 9162 root of a non-empty list of leaves when every leaf i is a canonical leaf with\n"
"seq first_seq + i within the limits; otherwise the index of the first leaf that is not.");

static PyObject *check_window(PyObject *self, PyObject *args)
{
    PyObject *seq_obj;
    unsigned long long first;
    Limits lim;
    if (!PyArg_ParseTuple(args, "OKnnnK", &seq_obj, &first, &lim.max_leaf, &lim.max_signal,
                          &lim.max_unit, &lim.max_quality))
        return NULL;
    /* a tuple of our own: its items stay referenced and in place while the GIL is released,
       whatever another thread does to the caller's list */
    PyObject *leaves = PySequence_Tuple(seq_obj);
    if (leaves == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(leaves);
    PyObject **items = ((PyTupleObject *)leaves)->ob_item;
    if (n == 0) {
        Py_DECREF(leaves);
        PyErr_SetString(PyExc_ValueError, "an empty window has no leaves to check");
        return NULL;
    }
    Scratch s;
    if (!scratch_alloc(&s, n)) {
        Py_DECREF(leaves);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t k = PyBytes_Check(items[i])
            ? leaf_len((const unsigned char *)PyBytes_AS_STRING(items[i]),
                       PyBytes_GET_SIZE(items[i]), (uint64_t)first + (uint64_t)i, &lim)
            : 0;
        if (k == 0 || k != PyBytes_GET_SIZE(items[i])) { /* 0: no leaf, not an empty one */
            PyMem_RawFree(s.ptr);
            Py_DECREF(leaves);
            return PyLong_FromSsize_t(i);
        }
        s.ptr[i] = (const unsigned char *)PyBytes_AS_STRING(items[i]);
        s.len[i] = PyBytes_GET_SIZE(items[i]);
    }
    PyObject *root = finish(&s, n);
    Py_DECREF(leaves);
    return root;
}

PyDoc_STRVAR(check_sequence_doc,
"check_sequence(blob, count, first_seq, max_leaf, max_signal, max_unit, max_quality)\n"
"    -> bytes | int\n\n"
"The RFC 9162 root when `blob` is exactly `count` >= 1 canonical leaves back to back (a CBOR\n"
"sequence, RFC 8742), leaf i with seq first_seq + i; otherwise the index of the first leaf\n"
"that is not one, or `count` when bytes follow the last leaf.");

static PyObject *check_sequence(PyObject *self, PyObject *args)
{
    const unsigned char *blob;
    Py_ssize_t size, n;
    unsigned long long first;
    Limits lim;
    /* y#: an immutable bytes-like object, kept alive by `args` while the GIL is released */
    if (!PyArg_ParseTuple(args, "y#nKnnnK", &blob, &size, &n, &first, &lim.max_leaf,
                          &lim.max_signal, &lim.max_unit, &lim.max_quality))
        return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "an empty window has no leaves to check");
        return NULL;
    }
    /* a leaf takes at least 2 bytes, so leaf size / 2 fails at the latest: room for that
       many, whatever count a peer claims */
    Py_ssize_t cap = n < size / 2 + 1 ? n : size / 2 + 1;
    Scratch s;
    if (!scratch_alloc(&s, cap))
        return PyErr_NoMemory();
    Py_ssize_t pos = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t k = i < cap ? leaf_len(blob + pos, size - pos, (uint64_t)first + (uint64_t)i, &lim) : 0;
        if (k == 0) {
            PyMem_RawFree(s.ptr);
            return PyLong_FromSsize_t(i);
        }
        s.ptr[i] = blob + pos;
        s.len[i] = k;
        pos += k;
    }
    if (pos != size) {
        PyMem_RawFree(s.ptr);
        return PyLong_FromSsize_t(n);
    }
    return finish(&s, n);
}

/* ---- decode_plain(): the fast path of attestation.cborsafe.loads --------------------------
 *
 * The hub decodes every upload body, COSE_Sign1 and micro-proof payload it receives with
 * cborsafe.loads (cbor2 plus a walk that refuses invalid UTF-8; ~40 us a proof on the
 * ingest path). Those items only ever use "plain" CBOR: integers, byte and text strings,
 * definite arrays and maps, false/true/null, floats and tag 18. decode_plain() builds exactly
 * what cbor2 builds for such an item (list, dict with int/text/bytes keys, CBORTag for tag 18)
 * and answers None for anything else -- another tag, an indefinite length, a simple value,
 * invalid UTF-8, nesting deeper than PLAIN_MAX_DEPTH, bytes after the item, a truncated
 * input -- so that cbor2 decides those (and names what is wrong). It never refuses input
 * itself: a None costs the fast path, never a different answer
 * (tests/unit/test_cborsafe.py compares both on Hypothesis items and corruptions; fuzz target
 * `plaincbor`).
 *
 * With the item it says whether the input was the item's deterministic encoding, exactly
 * as attestation.cborsafe.dumps(item) would write it (ADR 0013: a micro-proof has one
 * canonical form): every head in its shortest form, every float in the shortest width that
 * keeps its value (NaN only as f9 7e00, the rule value() applies to leaves), every map's
 * keys in cbor2's canonical order (shorter encoding first, then bytewise; RFC 8949 s.4.2.1
 * whenever a map's keys share one major type) and no key twice. Re-encoding with cbor2 to
 * compare costs ~28 us a proof; this costs a comparison a head. */

#define PLAIN_MAX_DEPTH 32

typedef struct {
    const unsigned char *p;
    Py_ssize_t n, pos;
    PyObject *tag_type; /* cbor2.CBORTag */
    int canonical;      /* cleared at the first choice cborsafe.dumps would not make */
} Reader;

/* The next head, any width (cbor2 accepts non-shortest heads, so decode_plain does too);
   0 for a reserved or indefinite one, or a truncated input. */
static int plain_head(Reader *r, unsigned *major, unsigned *ai, uint64_t *arg)
{
    if (r->pos >= r->n)
        return 0;
    unsigned ib = r->p[r->pos];
    *major = ib >> 5;
    *ai = ib & 31u;
    if (*ai < 24) {
        *arg = *ai;
        r->pos += 1;
        return 1;
    }
    int len = *ai == 24 ? 1 : *ai == 25 ? 2 : *ai == 26 ? 4 : *ai == 27 ? 8 : 0;
    if (len == 0 || r->n - r->pos < 1 + len)
        return 0;
    *arg = be(r->p + r->pos + 1, len);
    r->pos += 1 + len;
    /* a float's width is judged by value(); any other head must need its width */
    static const uint64_t smallest[9] = {0, 24, 0x100, 0, 0x10000, 0, 0, 0, 0x100000000ULL};
    if (*major != 7 && *arg < smallest[len])
        r->canonical = 0;
    return 1;
}

/* NULL without an exception: not plain (the caller answers None); with one: out of memory. */
static PyObject *plain_item(Reader *r, int depth);

static PyObject *plain_string(Reader *r, unsigned major, uint64_t len)
{
    if (len > (uint64_t)(r->n - r->pos))
        return NULL;
    const char *s = (const char *)r->p + r->pos;
    r->pos += (Py_ssize_t)len;
    if (major == 2)
        return PyBytes_FromStringAndSize(s, (Py_ssize_t)len);
    if (utf8_chars((const unsigned char *)s, (Py_ssize_t)len) < 0)
        return NULL; /* cbor2 and cborsafe refuse it, with their message */
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "strict");
}

static PyObject *plain_array(Reader *r, int depth, uint64_t count)
{
    if (count > (uint64_t)(r->n - r->pos)) /* an item takes a byte at least */
        return NULL;
    PyObject *list = PyList_New((Py_ssize_t)count);
    for (Py_ssize_t i = 0; list != NULL && i < (Py_ssize_t)count; i++) {
        PyObject *item = plain_item(r, depth + 1);
        if (item == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *plain_map(Reader *r, int depth, uint64_t count)
{
    if (count > (uint64_t)(r->n - r->pos) / 2) /* a key and a value: two bytes at least */
        return NULL;
    PyObject *dict = PyDict_New();
    Py_ssize_t last_start = 0, last_len = -1; /* the previous key's encoding */
    for (uint64_t i = 0; dict != NULL && i < count; i++) {
        Py_ssize_t key_start = r->pos;
        PyObject *key = plain_item(r, depth + 1);
        Py_ssize_t key_len = r->pos - key_start;
        if (key != NULL && last_len >= 0) { /* ascending: shorter first, then bytewise */
            int order = key_len != last_len ? (key_len > last_len ? 1 : -1)
                                            : memcmp(r->p + key_start, r->p + last_start,
                                                     (size_t)key_len);
            if (order <= 0) /* out of order, or the same key again */
                r->canonical = 0;
        }
        last_start = key_start;
        last_len = key_len;
        /* cbor2 builds keys immutably (an array key becomes a tuple): only scalars here */
        int scalar = key != NULL && (PyLong_CheckExact(key) || PyUnicode_CheckExact(key) ||
                                     PyBytes_CheckExact(key));
        PyObject *value = scalar ? plain_item(r, depth + 1) : NULL;
        if (value == NULL || PyDict_SetItem(dict, key, value) < 0) /* a repeated key: the last */
            Py_CLEAR(dict);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    return dict;
}

static PyObject *plain_item(Reader *r, int depth)
{
    unsigned major, ai;
    uint64_t arg;
    Py_ssize_t start = r->pos;
    if (depth > PLAIN_MAX_DEPTH || !plain_head(r, &major, &ai, &arg))
        return NULL;
    switch (major) {
    case 0:
        return PyLong_FromUnsignedLongLong(arg);
    case 1:
        return arg > (uint64_t)INT64_MAX ? NULL : PyLong_FromLongLong(-1 - (long long)arg);
    case 2:
    case 3:
        return plain_string(r, major, arg);
    case 4:
        return plain_array(r, depth, arg);
    case 5:
        return plain_map(r, depth, arg);
    case 6: {
        if (arg != 18) /* COSE_Sign1's; cbor2 gives other tags meanings of its own */
            return NULL;
        PyObject *value = plain_item(r, depth + 1);
        if (value == NULL)
            return NULL;
        PyObject *tag = PyObject_CallFunction(r->tag_type, "KO", (unsigned long long)arg, value);
        Py_DECREF(value);
        return tag;
    }
    default: /* 7: simple values and floats */
        switch (ai) {
        case 20:
            Py_RETURN_FALSE;
        case 21:
            Py_RETURN_TRUE;
        case 22:
            Py_RETURN_NONE;
        case 25:
        case 26:
        case 27:
            /* value(): not its shortest width, or a NaN other than f9 7e00 */
            if (value(r->p + start, r->n - start) == 0)
                r->canonical = 0;
            return PyFloat_FromDouble(ai == 25   ? PyFloat_Unpack2((const char *)r->p + start + 1, 0)
                                      : ai == 26 ? PyFloat_Unpack4((const char *)r->p + start + 1, 0)
                                                 : PyFloat_Unpack8((const char *)r->p + start + 1, 0));
        default: /* undefined, other simple values, a stray break */
            return NULL;
        }
    }
}

PyDoc_STRVAR(decode_plain_doc,
"decode_plain(data, tag_type) -> tuple[object, bool] | None\n\n"
"(item, canonical) when `data` is exactly one plain CBOR item (integers, strings with valid\n"
"UTF-8, definite arrays, maps with integer/text/bytes keys, false/true/null, floats, tag 18\n"
"built as tag_type(18, value)), decoded as cbor2 decodes it; canonical: `data` is what\n"
"cbor2.dumps(item, canonical=True) writes. None for anything else, which the caller then\n"
"hands to cbor2.");

static PyObject *decode_plain(PyObject *self, PyObject *args)
{
    Py_buffer data;
    Reader r;
    if (!PyArg_ParseTuple(args, "y*O", &data, &r.tag_type))
        return NULL;
    r.p = data.buf;
    r.n = data.len;
    r.pos = 0;
    r.canonical = 1;
    PyObject *item = plain_item(&r, 0);
    PyBuffer_Release(&data);
    if (item != NULL && r.pos != r.n) /* bytes after the item: cborsafe's cbor2 path refuses them */
        Py_CLEAR(item);
    if (item == NULL) {
        if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_MemoryError))
            return NULL;
        PyErr_Clear(); /* e.g. tag_type refused its arguments: let cbor2 decide */
        Py_RETURN_NONE;
    }
    /* the tuple takes item's reference, even on failure */
    return Py_BuildValue("(NO)", item, r.canonical ? Py_True : Py_False);
}

PyDoc_STRVAR(backend_doc,
"backend() -> str\n\n"
"The SHA-256 code the tree uses: 'avx512' (sixteen nodes at a time in AVX-512 lanes),\n"
"'sha-ni' (four at a time with the x86 SHA extensions) or 'openssl' (one at a time).");
static PyObject *backend(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(backend_in_use->name);
}

PyDoc_STRVAR(backends_doc,
"backends() -> list[str]\n\n"
"The SHA-256 backends this CPU runs (the one backend() uses was the fastest at import).");
static PyObject *backends(PyObject *self, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    for (int i = 0; out != NULL && i < N_BACKENDS; i++) {
        if (!BACKENDS[i].available())
            continue;
        PyObject *name = PyUnicode_FromString(BACKENDS[i].name);
        if (name == NULL || PyList_Append(out, name) < 0)
            Py_CLEAR(out);
        Py_XDECREF(name);
    }
    return out;
}

PyDoc_STRVAR(calibration_doc,
"calibration() -> dict[str, float]\n\n"
"Nanoseconds each backend this CPU runs took to root the import's calibration tree (best\n"
"of its rounds); backend() was the fastest of them until use_backend() was called.");
static PyObject *calibration(PyObject *self, PyObject *unused)
{
    PyObject *out = PyDict_New();
    for (int i = 0; out != NULL && i < N_BACKENDS; i++) {
        if (calibrated_ns[i] < 0)
            continue;
        PyObject *ns = PyFloat_FromDouble(calibrated_ns[i]);
        if (ns == NULL || PyDict_SetItemString(out, BACKENDS[i].name, ns) < 0)
            Py_CLEAR(out);
        Py_XDECREF(ns);
    }
    return out;
}

PyDoc_STRVAR(use_backend_doc,
"use_backend(name) -> str\n\n"
"Hash with `name` ('openssl' anywhere; 'sha-ni' and 'avx512' where the CPU has them);\n"
"returns the one used before. For tests and benchmarks, which measure and check each.");
static PyObject *use_backend(PyObject *self, PyObject *arg)
{
    PyObject *before = backend(self, NULL);
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (before == NULL || name == NULL) {
        Py_XDECREF(before);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "use_backend() takes a backend's name");
        return NULL;
    }
    for (int i = 0; i < N_BACKENDS; i++)
        if (strcmp(name, BACKENDS[i].name) == 0 && BACKENDS[i].available()) {
            backend_in_use = &BACKENDS[i];
            return before;
        }
    Py_DECREF(before);
    PyErr_Format(PyExc_ValueError, "no SHA-256 backend %R here (try 'openssl')", arg);
    return NULL;
}

/* ---- The statistics map of a micro-proof (payload key 12), as cbor2 writes it ----
 *
 * stats_map(stats) -> bytes | None: attestation.cborsafe.dumps({signal: [n, mean, m2, min,
 * max]}) (deterministic CBOR, RFC 8949's shortest floats) for a dict of text keys whose
 * values are 5-tuples (SignalStats) of an int 0 <= n < 2^63 and four floats; None for
 * anything else, and for a binary16 subnormal or -0.0: the caller then encodes in Python. The signer's largest per-signal cost in Python
 * (~0.9 us a signal, one signal a reading on a big gateway). Keys are sorted as cbor2 sorts
 * them: by the length of their encoding, then bytewise. */

typedef struct {
    unsigned char *p;
    Py_ssize_t n, cap;
} Buf;

static int buf_room(Buf *b, Py_ssize_t more)
{
    if (b->n + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more)
        cap *= 2;
    unsigned char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void put_head(Buf *b, unsigned major, uint64_t v) /* room for 9 bytes checked */
{
    unsigned char *p = b->p + b->n;
    unsigned mt = major << 5;
    if (v < 24) {
        p[0] = (unsigned char)(mt | v);
        b->n += 1;
    } else if (v < 0x100) {
        p[0] = (unsigned char)(mt | 24);
        p[1] = (unsigned char)v;
        b->n += 2;
    } else if (v < 0x10000) {
        p[0] = (unsigned char)(mt | 25);
        p[1] = (unsigned char)(v >> 8);
        p[2] = (unsigned char)v;
        b->n += 3;
    } else if (v < 0x100000000ULL) {
        p[0] = (unsigned char)(mt | 26);
        for (int i = 0; i < 4; i++)
            p[1 + i] = (unsigned char)(v >> (24 - 8 * i));
        b->n += 5;
    } else {
        p[0] = (unsigned char)(mt | 27);
        for (int i = 0; i < 8; i++)
            p[1 + i] = (unsigned char)(v >> (56 - 8 * i));
        b->n += 9;
    }
}

/* RFC 8949's shortest float, as attestation.cborsafe.dumps writes it (room for 9 bytes
   checked); -1: cborsafe.dumps must decide */
static int put_float(Buf *b, double x)
{
    unsigned char *p = b->p + b->n;
    if (isnan(x)) {
        memcpy(p, "\xf9\x7e\x00", 3);
        b->n += 3;
        return 0;
    }
    if (isinf(x)) {
        memcpy(p, x > 0 ? "\xf9\x7c\x00" : "\xf9\xfc\x00", 3);
        b->n += 3;
        return 0;
    }
    if (x == 0.0) {
        if (signbit(x))
            return -1;
        memcpy(p, "\xf9\x00\x00", 3);
        b->n += 3;
        return 0;
    }
    double a = fabs(x);
    if (a <= 3.4028234663852886e38 && (double)(float)x == x) {
        float f = (float)x;
        uint32_t u;
        memcpy(&u, &f, 4);
        unsigned exp = (u >> 23) & 0xFF;
        if (fits_half(x)) {
            if (exp < 127 - 14)
                return -1; /* a binary16 subnormal: cbor2 writes it (as RFC 8949 does) */
            unsigned h = ((u >> 16) & 0x8000) | ((exp - 127 + 15) << 10) | ((u >> 13) & 0x3FF);
            p[0] = 0xF9;
            p[1] = (unsigned char)(h >> 8);
            p[2] = (unsigned char)h;
            b->n += 3;
            return 0;
        }
        p[0] = 0xFA;
        for (int i = 0; i < 4; i++)
            p[1 + i] = (unsigned char)(u >> (24 - 8 * i));
        b->n += 5;
        return 0;
    }
    uint64_t u;
    memcpy(&u, &x, 8);
    p[0] = 0xFB;
    for (int i = 0; i < 8; i++)
        p[1 + i] = (unsigned char)(u >> (56 - 8 * i));
    b->n += 9;
    return 0;
}

typedef struct {
    Py_ssize_t start, key_len, len; /* in the entries buffer */
} Entry;

static const unsigned char *sort_base;

static int entry_order(const void *pa, const void *pb)
{
    const Entry *a = pa, *b = pb;
    if (a->key_len != b->key_len)
        return a->key_len < b->key_len ? -1 : 1;
    return memcmp(sort_base + a->start, sort_base + b->start, (size_t)a->key_len);
}

/* one signal's entry: key, then [n, mean, m2, min, max]; 1: not ours (None), -1: error */
static int put_entry(Buf *b, PyObject *key, PyObject *val, Entry *e)
{
    if (!PyUnicode_CheckExact(key) || !PyTuple_Check(val) || PyTuple_GET_SIZE(val) != 5)
        return 1;
    PyObject *n = PyTuple_GET_ITEM(val, 0);
    if (!PyLong_CheckExact(n))
        return 1;
    int overflow;
    long long count = PyLong_AsLongLongAndOverflow(n, &overflow);
    if (overflow || count < 0)
        return 1;
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(key, &len);
    if (utf8 == NULL)
        return -1;
    if (buf_room(b, 9 + len + 1 + 9 + 4 * 9) < 0)
        return -1;
    e->start = b->n;
    put_head(b, 3, (uint64_t)len);
    memcpy(b->p + b->n, utf8, (size_t)len);
    b->n += len;
    e->key_len = b->n - e->start;
    b->p[b->n++] = 0x85;
    put_head(b, 0, (uint64_t)count);
    for (int i = 1; i < 5; i++) {
        PyObject *f = PyTuple_GET_ITEM(val, i);
        if (!PyFloat_CheckExact(f) || put_float(b, PyFloat_AS_DOUBLE(f)) < 0)
            return 1;
    }
    e->len = b->n - e->start;
    return 0;
}

static PyObject *stats_map(PyObject *self, PyObject *stats)
{
    if (!PyDict_CheckExact(stats)) {
        PyErr_SetString(PyExc_TypeError, "stats_map: a dict");
        return NULL;
    }
    Py_ssize_t count = PyDict_GET_SIZE(stats), pos = 0, i = 0;
    Buf b = {NULL, 0, 0};
    Entry *entries = PyMem_Malloc(sizeof(Entry) * (size_t)(count ? count : 1));
    PyObject *key, *val, *out = NULL;
    Buf head = {NULL, 0, 0};
    if (entries == NULL)
        return PyErr_NoMemory();
    while (PyDict_Next(stats, &pos, &key, &val)) {
        int got = put_entry(&b, key, val, &entries[i++]);
        if (got != 0) {
            if (got > 0)
                out = Py_NewRef(Py_None);
            goto done;
        }
    }
    sort_base = b.p;
    qsort(entries, (size_t)count, sizeof(Entry), entry_order);
    if (buf_room(&head, 9) < 0)
        goto done;
    put_head(&head, 5, (uint64_t)count);
    out = PyBytes_FromStringAndSize(NULL, head.n + b.n);
    if (out != NULL) {
        char *q = PyBytes_AS_STRING(out);
        memcpy(q, head.p, (size_t)head.n);
        q += head.n;
        for (i = 0; i < count; i++) {
            memcpy(q, b.p + entries[i].start, (size_t)entries[i].len);
            q += entries[i].len;
        }
    }
done:
    PyMem_Free(head.p);
    PyMem_Free(b.p);
    PyMem_Free(entries);
    return out;
}

PyDoc_STRVAR(stats_map_doc,
"stats_map(stats) -> bytes | None\n\n"
"attestation.cborsafe.dumps({signal: [n, mean, m2, min, max]}) for a dict of str to\n"
"5-tuples (int, 4 floats); None where Python must decide (see leafcheck.c).");

/* ---- A window's leaves (ADR 0049) ----
 *
 * encode_leaves(readings, fallback) -> tuple[bytes, ...]: encode_leaf of each Reading (the
 * deterministic CBOR map {1: seq, 2: ts_ns, 3: signal, 4: value, 5: unit, 6: quality},
 * a float value in RFC 8949's shortest exact form), in C for a float or text value, an
 * int seq, ts_ns and quality in range; ``fallback`` (the Python encode_leaf) for any other
 * reading. The sealer's per-reading cost in Python was ~0.65 us a leaf. */

static PyObject *s_seq, *s_ts, *s_signal, *s_value, *s_unit, *s_quality;

static int put_text(Buf *b, PyObject *s)
{
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(s, &len);
    if (utf8 == NULL || buf_room(b, 9 + len) < 0)
        return -1;
    put_head(b, 3, (uint64_t)len);
    memcpy(b->p + b->n, utf8, (size_t)len);
    b->n += len;
    return 0;
}

static void put_leaf_float(Buf *b, double x) /* room for 9 bytes checked */
{
    unsigned char *p = b->p + b->n;
    if (isnan(x)) {
        memcpy(p, "\xf9\x7e\x00", 3);
        b->n += 3;
        return;
    }
    if (isinf(x) || (fabs(x) <= 3.4028234663852886e38 && (double)(float)x == x)) {
        if (fits_half(x)) {
            p[0] = 0xF9;
            PyFloat_Pack2(x, (char *)p + 1, 0); /* exact: cannot fail */
            b->n += 3;
            return;
        }
        p[0] = 0xFA;
        PyFloat_Pack4(x, (char *)p + 1, 0);
        b->n += 5;
        return;
    }
    p[0] = 0xFB;
    PyFloat_Pack8(x, (char *)p + 1, 0);
    b->n += 9;
}

/* 0 with the leaf in b; 1: not ours (the fallback encodes it); -1: error */
static int put_leaf(Buf *b, PyObject *r)
{
    PyObject *f[6] = {NULL};
    PyObject *names[6] = {s_seq, s_ts, s_signal, s_value, s_unit, s_quality};
    int rc = -1;
    for (int i = 0; i < 6; i++)
        if ((f[i] = PyObject_GetAttr(r, names[i])) == NULL)
            goto out;
    rc = 1;
    if (!PyLong_CheckExact(f[0]) || !PyLong_CheckExact(f[1]) || !PyLong_CheckExact(f[5]) ||
        !PyUnicode_CheckExact(f[2]) || !PyUnicode_CheckExact(f[4]) ||
        !(PyFloat_CheckExact(f[3]) || PyUnicode_CheckExact(f[3])))
        goto out;
    int over;
    long long seq = PyLong_AsLongLongAndOverflow(f[0], &over);
    if (over || seq < 0)
        goto out;
    long long ts = PyLong_AsLongLongAndOverflow(f[1], &over);
    if (over)
        goto out;
    long long quality = PyLong_AsLongLongAndOverflow(f[5], &over);
    if (over || quality < 0)
        goto out;
    rc = -1;
    if (buf_room(b, 1 + 10 + 10) < 0)
        goto out;
    b->p[b->n++] = 0xA6;
    b->p[b->n++] = 0x01;
    put_head(b, 0, (uint64_t)seq);
    b->p[b->n++] = 0x02;
    if (ts >= 0)
        put_head(b, 0, (uint64_t)ts);
    else
        put_head(b, 1, (uint64_t)(-1 - ts));
    if (buf_room(b, 1) < 0)
        goto out;
    b->p[b->n++] = 0x03;
    if (put_text(b, f[2]) < 0 || buf_room(b, 1) < 0)
        goto out;
    b->p[b->n++] = 0x04;
    if (PyUnicode_CheckExact(f[3])) {
        if (put_text(b, f[3]) < 0)
            goto out;
    } else {
        if (buf_room(b, 9) < 0)
            goto out;
        put_leaf_float(b, PyFloat_AS_DOUBLE(f[3]));
    }
    if (buf_room(b, 1) < 0)
        goto out;
    b->p[b->n++] = 0x05;
    if (put_text(b, f[4]) < 0 || buf_room(b, 10) < 0)
        goto out;
    b->p[b->n++] = 0x06;
    put_head(b, 0, (uint64_t)quality);
    rc = 0;
out:
    for (int i = 0; i < 6; i++)
        Py_XDECREF(f[i]);
    return rc;
}

static PyObject *encode_leaves(PyObject *self, PyObject *args)
{
    PyObject *readings, *fallback;
    if (!PyArg_ParseTuple(args, "OO:encode_leaves", &readings, &fallback))
        return NULL;
    /* a tuple of its own: the fallback runs Python code, which could change a list */
    PyObject *seq = PySequence_Tuple(readings);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject **items = &PyTuple_GET_ITEM(seq, 0);
    PyObject *out = PyTuple_New(n);
    Buf b = {NULL, 0, 0};
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *leaf;
        b.n = 0;
        int got = put_leaf(&b, items[i]);
        if (got < 0)
            leaf = NULL;
        else if (got > 0)
            leaf = PyObject_CallOneArg(fallback, items[i]);
        else
            leaf = PyBytes_FromStringAndSize((const char *)b.p, b.n);
        if (leaf == NULL)
            Py_CLEAR(out);
        else
            PyTuple_SET_ITEM(out, i, leaf);
    }
    PyMem_Free(b.p);
    Py_DECREF(seq);
    return out;
}

PyDoc_STRVAR(encode_leaves_doc,
"encode_leaves(readings, fallback) -> tuple[bytes, ...]\n\n"
"encode_leaf of each reading; `fallback` (encode_leaf) for one it does not take.");

static PyMethodDef methods[] = {
    {"backend", backend, METH_NOARGS, backend_doc},
    {"backends", backends, METH_NOARGS, backends_doc},
    {"calibration", calibration, METH_NOARGS, calibration_doc},
    {"use_backend", use_backend, METH_O, use_backend_doc},
    {"check_window", check_window, METH_VARARGS, check_window_doc},
    {"check_sequence", check_sequence, METH_VARARGS, check_sequence_doc},
    {"decode_plain", decode_plain, METH_VARARGS, decode_plain_doc},
    {"stats_map", stats_map, METH_O, stats_map_doc},
    {"encode_leaves", encode_leaves, METH_VARARGS, encode_leaves_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "attestation._leafcheck",
    "Native window check and Merkle root for the hub's ingest path (see leafcheck.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__leafcheck(void)
{
    calibrate();
    s_seq = PyUnicode_InternFromString("seq");
    s_ts = PyUnicode_InternFromString("ts_ns");
    s_signal = PyUnicode_InternFromString("signal");
    s_value = PyUnicode_InternFromString("value");
    s_unit = PyUnicode_InternFromString("unit");
    s_quality = PyUnicode_InternFromString("quality");
    if (!s_seq || !s_ts || !s_signal || !s_value || !s_unit || !s_quality)
        return NULL;
    return PyModule_Create(&module);
}
