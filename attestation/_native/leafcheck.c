/*
 * attestation._leafcheck: check a whole window of leaves and compute its RFC 9162 root in C.
 *
 * Why this exists (docs/adr/0007-native-window-check.md): the hub checks every uploaded
 * leaf before it accepts a window. In Python that costs ~5 us a leaf (cbor2 decode, the
 * re-encode that proves deterministic form, two SHA-256 calls), which caps one core at
 * ~100-200 windows of 1,000 readings a second. No maintained library validates *our* leaf
 * schema in deterministic CBOR, so this file does exactly that and nothing else.
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
 * 5: unit, 6: quality}) is: a6 | 01 uint | 02 int | 03 text | 04 float | 05 text | 06 uint,
 * every head in its shortest form, the float in the shortest IEEE 754 width that keeps its
 * value, NaN only as f9 7e00, text valid UTF-8.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

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

static double half_value(unsigned h)
{
    unsigned e = (h >> 10) & 0x1F, m = h & 0x3FF;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m + 1024, (int)e - 25);
    return (h & 0x8000) ? -v : v;
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

/* A float in its deterministic width; its length, 0 if bad. */
static Py_ssize_t value(const unsigned char *p, Py_ssize_t n)
{
    if (n >= 3 && p[0] == 0xF9) {
        unsigned h = (unsigned)be(p + 1, 2);
        return isnan(half_value(h)) && h != 0x7E00 ? 0 : 3;
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

/* The RFC 9162 root of n >= 1 leaves (leaf i at ptr[i], len[i] bytes) into out[32].
   `level` is scratch of n * 32 bytes. Runs without the GIL: it touches no Python object. */
static void merkle_root(const unsigned char *const *ptr, const Py_ssize_t *len, Py_ssize_t n,
                        unsigned char *level, unsigned char *out)
{
    unsigned char buf[65];
    for (Py_ssize_t i = 0; i < n; i++) {
        SHA256_CTX c;
        buf[0] = 0x00;
        SHA256_Init(&c);
        SHA256_Update(&c, buf, 1);
        SHA256_Update(&c, ptr[i], (size_t)len[i]);
        SHA256_Final(level + 32 * i, &c);
    }
    /* pair neighbours level by level, carrying an odd last node up: RFC 9162 s.2.1.1's tree */
    buf[0] = 0x01;
    for (Py_ssize_t width = n; width > 1; width = (width + 1) / 2) {
        for (Py_ssize_t i = 0; i + 1 < width; i += 2) {
            SHA256_CTX c; /* not SHA256(): in OpenSSL 3 it fetches the algorithm each call */
            memcpy(buf + 1, level + 32 * i, 64);
            SHA256_Init(&c);
            SHA256_Update(&c, buf, 65);
            SHA256_Final(level + 32 * (i / 2), &c);
        }
        if (width % 2)
            memmove(level + 32 * (width / 2), level + 32 * (width - 1), 32);
    }
    memcpy(out, level, 32);
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

static PyMethodDef methods[] = {
    {"check_window", check_window, METH_VARARGS, check_window_doc},
    {"check_sequence", check_sequence, METH_VARARGS, check_sequence_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "attestation._leafcheck",
    "Native window check and Merkle root for the hub's ingest path (see leafcheck.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__leafcheck(void) { return PyModule_Create(&module); }
