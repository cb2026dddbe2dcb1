/* Protobuf wire-format writers for encode.c: a growable output buffer, varints, fixed64 and
   span attribute KeyValues. The put* writers assume room was reserved (buf_reserve). */

#ifndef COHORTGATE_SPANENC_PB_H
#define COHORTGATE_SPANENC_PB_H

#include "spanenc.h"

#include <string.h>

typedef struct {
    unsigned char *p;
    Py_ssize_t len, cap;
    unsigned char inline_[2048];
} Buf;

static inline void buf_init(Buf *b) {
    b->p = b->inline_;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof(b->inline_);
}

static inline void buf_free(Buf *b) {
    if (b->p != b->inline_) PyMem_Free(b->p);
}

/* room for `more` bytes; the put* writers below assume it */
static inline int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + more) cap *= 2;
    unsigned char *np;
    if (b->p == b->inline_) {
        np = PyMem_Malloc((size_t)cap);
        if (np != NULL) memcpy(np, b->p, (size_t)b->len);
    } else {
        np = PyMem_Realloc(b->p, (size_t)cap);
    }
    if (np == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = np;
    b->cap = cap;
    return 0;
}

static inline void put(Buf *b, const void *d, Py_ssize_t n) {
    memcpy(b->p + b->len, d, (size_t)n);
    b->len += n;
}

static inline void put1(Buf *b, unsigned char c) { b->p[b->len++] = c; }

static inline int varint_len(uint64_t v) {
    int n = 1;
    while (v > 0x7F) v >>= 7, n++;
    return n;
}

static inline void put_varint(Buf *b, uint64_t v) {
    while (v > 0x7F) {
        put1(b, (unsigned char)((v & 0x7F) | 0x80));
        v >>= 7;
    }
    put1(b, (unsigned char)v);
}

static inline void put_u64le(Buf *b, uint64_t v) {
    for (int i = 0; i < 8; i++) put1(b, (unsigned char)(v >> (8 * i)));
}

/* span start_time_unix_nano (field 7) and end_time_unix_nano (8), both fixed64: 18 bytes */
static inline void put_times(Buf *b, long long start, long long end) {
    put1(b, 0x39);
    put_u64le(b, (uint64_t)start);
    put1(b, 0x41);
    put_u64le(b, (uint64_t)end);
}

/* Span.attributes (field 9) KeyValue{key (1), value (2): AnyValue of `av` bytes}: its size, and
   the writer of everything before the AnyValue's own bytes */
static inline Py_ssize_t kv_len(Py_ssize_t klen, Py_ssize_t av) {
    Py_ssize_t inner = 1 + varint_len((uint64_t)klen) + klen + 1 + varint_len((uint64_t)av) + av;
    return 1 + varint_len((uint64_t)inner) + inner;
}

static inline void put_kv_head(Buf *b, const char *key, Py_ssize_t klen, Py_ssize_t av) {
    Py_ssize_t inner = 1 + varint_len((uint64_t)klen) + klen + 1 + varint_len((uint64_t)av) + av;
    put1(b, 0x4a);
    put_varint(b, (uint64_t)inner);
    put1(b, 0x0a);
    put_varint(b, (uint64_t)klen);
    put(b, key, klen);
    put1(b, 0x12);
    put_varint(b, (uint64_t)av);
}

/* AnyValue sizes: int_value (3, varint), string_value (1), double_value (4, fixed64) */
static inline Py_ssize_t av_int(uint64_t v) { return 1 + varint_len(v); }
static inline Py_ssize_t av_str(Py_ssize_t n) { return 1 + varint_len((uint64_t)n) + n; }
#define AV_DOUBLE 9

static inline void put_kv_int(Buf *b, const char *key, Py_ssize_t klen, uint64_t v) {
    put_kv_head(b, key, klen, av_int(v));
    put1(b, 0x18);
    put_varint(b, v);
}

static inline void put_kv_str(Buf *b, const char *key, Py_ssize_t klen, const char *s, Py_ssize_t n) {
    put_kv_head(b, key, klen, av_str(n));
    put1(b, 0x0a);
    put_varint(b, (uint64_t)n);
    put(b, s, n);
}

static inline void put_kv_double(Buf *b, const char *key, Py_ssize_t klen, double v) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    put_kv_head(b, key, klen, AV_DOUBLE);
    put1(b, 0x21);
    put_u64le(b, bits);
}

#endif
