/* Trace and span ids, and the W3C traceparent string.
   Ids come from a pool of getrandom(2) bytes (refilled every 4 KiB, reset in a forked child so
   workers never share ids); they need uniqueness, not secrecy. Every function here runs with the
   GIL held and never releases it, so the pool needs no lock. */

#include "spanenc.h"

#include <errno.h>
#include <string.h>
#if defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__)
#include <stdlib.h> /* arc4random_buf */
#define HAVE_ARC4RANDOM 1
#else
#include <sys/random.h>
#endif

/* ------------------------------------------------------------------ random ids */

static unsigned char pool[4096];
static size_t pool_pos = sizeof(pool);

void se_pool_reset_in_child(void) { pool_pos = sizeof(pool); }

static int pool_fill(void) {
#ifdef HAVE_ARC4RANDOM
    arc4random_buf(pool, sizeof(pool));
#else
    size_t got = 0;
    while (got < sizeof(pool)) {
        ssize_t r = getrandom(pool + got, sizeof(pool) - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        got += (size_t)r;
    }
#endif
    pool_pos = 0;
    return 0;
}

/* n fresh random bytes into dst, never all zero (an all-zero id is invalid in W3C trace context) */
static int take_id(unsigned char *dst, size_t n) {
    for (;;) {
        if (pool_pos + n > sizeof(pool) && pool_fill() < 0) return -1;
        memcpy(dst, pool + pool_pos, n);
        pool_pos += n;
        for (size_t i = 0; i < n; i++)
            if (dst[i]) return 0;
    }
}

PyObject *se_new_id(size_t n) {
    unsigned char b[16];
    if (take_id(b, n) < 0) return NULL;
    return PyBytes_FromStringAndSize((const char *)b, (Py_ssize_t)n);
}

PyObject *se_py_ids(PyObject *m, PyObject *unused) {
    PyObject *t = PyTuple_New(3);
    if (t == NULL) return NULL;
    static const size_t sizes[3] = {16, 8, 8};
    for (Py_ssize_t i = 0; i < 3; i++) {
        PyObject *b = se_new_id(sizes[i]);
        if (b == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, b);
    }
    return t;
}

PyObject *se_py_span_id(PyObject *m, PyObject *unused) { return se_new_id(8); }

/* ------------------------------------------------------------------ traceparent */

static const char HEX[] = "0123456789abcdef";

PyObject *se_traceparent(PyObject *trace_id, PyObject *span_id, int sampled) {
    if (!PyBytes_Check(trace_id) || PyBytes_GET_SIZE(trace_id) != 16 || !PyBytes_Check(span_id) ||
        PyBytes_GET_SIZE(span_id) != 8) {
        PyErr_SetString(PyExc_ValueError, "traceparent: a 16-byte trace id and an 8-byte span id");
        return NULL;
    }
    PyObject *s = PyUnicode_New(55, 127);
    if (s == NULL) return NULL;
    Py_UCS1 *o = PyUnicode_1BYTE_DATA(s);
    const unsigned char *t = (const unsigned char *)PyBytes_AS_STRING(trace_id);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(span_id);
    *o++ = '0', *o++ = '0', *o++ = '-';
    for (int i = 0; i < 16; i++) *o++ = HEX[t[i] >> 4], *o++ = HEX[t[i] & 15];
    *o++ = '-';
    for (int i = 0; i < 8; i++) *o++ = HEX[p[i] >> 4], *o++ = HEX[p[i] & 15];
    *o++ = '-', *o++ = '0', *o++ = sampled ? '1' : '0';
    return s;
}

PyObject *se_py_traceparent(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "traceparent(trace_id, span_id, sampled)");
        return NULL;
    }
    int sampled = PyObject_IsTrue(args[2]);
    return sampled < 0 ? NULL : se_traceparent(args[0], args[1], sampled);
}
