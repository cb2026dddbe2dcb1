/* gateway._spanenc: the compiled fast path of request tracing.

   What: trace and span ids, the W3C traceparent string, and the OTLP protobuf of a client
   request's spans (its SERVER span and one CLIENT span per upstream attempt).
   Why: in CPython each of these is dozens of interpreter operations (300-600 CPU instructions
   each), which made tracing every request cost ~15% of the gateway's own instructions per
   request, above the project's 10% budget; here they are a few hundred instructions each
   (docs/observability.md has the measurements).
   Reference: gateway/tracing_attrs.py `encode_request` and gateway/tracing_export.py stay the
   definition and the fallback (no compiler at install, COHORTGATE_PURE_PYTHON=1). This file
   writes the same bytes for the usual request shapes and returns None for the others (recorded
   content, evaluation events, a classifier confidence, non-integer token counts), which then
   take the Python path; tests/observability/test_spanenc.py checks the two byte for byte.
   The span blocks that repeat across requests are the Python encoder's cache (`Encoder.blocks`),
   shared by both paths and filled by the Python builders given to `configure()`.
   Ids come from a pool of getrandom(2) bytes (refilled every 4 KiB, reset in a forked child so
   workers never share ids); they need uniqueness, not secrecy. Every function here runs with the
   GIL held and never releases it, so the pool needs no lock. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX */

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#if defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__)
#include <stdlib.h> /* arc4random_buf */
#define HAVE_ARC4RANDOM 1
#else
#include <sys/random.h>
#endif

/* ------------------------------------------------------------------ random ids */

static unsigned char pool[4096];
static size_t pool_pos = sizeof(pool);

static void pool_reset_in_child(void) { pool_pos = sizeof(pool); }

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

static PyObject *new_id(size_t n) {
    unsigned char b[16];
    if (take_id(b, n) < 0) return NULL;
    return PyBytes_FromStringAndSize((const char *)b, (Py_ssize_t)n);
}

static PyObject *py_ids(PyObject *m, PyObject *unused) {
    PyObject *t = PyTuple_New(3);
    if (t == NULL) return NULL;
    static const size_t sizes[3] = {16, 8, 8};
    for (Py_ssize_t i = 0; i < 3; i++) {
        PyObject *b = new_id(sizes[i]);
        if (b == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, b);
    }
    return t;
}

static PyObject *py_span_id(PyObject *m, PyObject *unused) { return new_id(8); }

/* ------------------------------------------------------------------ traceparent */

static const char HEX[] = "0123456789abcdef";

static PyObject *make_traceparent(PyObject *trace_id, PyObject *span_id, int sampled) {
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

static PyObject *py_traceparent(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "traceparent(trace_id, span_id, sampled)");
        return NULL;
    }
    int sampled = PyObject_IsTrue(args[2]);
    return sampled < 0 ? NULL : make_traceparent(args[0], args[1], sampled);
}

/* interned attribute names and constants, made at import */
enum {
    N_trace_id, N_span_id, N_attempt_ids, N_parent_id, N_content, N_start, N_end, N_t0,  /* _Req */
    N_attempts, N_operation, N_alias, N_stream, N_outcome, N_mirrored, N_status, N_response_model,
    N_served_model, N_error_type, N_cohort, N_cohort_reason, N_route_id, N_served_by, N_arm,
    N_fallback_reason, N_key_name, N_finish_reasons, N_request_params, N_request_id, N_input_tokens,
    N_output_tokens, N_ttft_s, N_cohort_confidence, N_evals,                                  /* record */
    N_client, N_upstream, N_model, N_seconds, N_upstream_status,                              /* Attempt */
    N_blocks,                                                                                 /* Encoder */
    S_root, S_attempt, S_ok, S_pending, S_client_closed, S_traceparent, S_tracestate,         /* values */
    N_COUNT
};
static const char *const NAMES[N_COUNT] = {
    "trace_id", "span_id", "attempt_ids", "parent_id", "content", "start", "end", "t0",
    "attempts", "operation", "alias", "stream", "outcome", "mirrored", "status", "response_model",
    "served_model", "error_type", "cohort", "cohort_reason", "route_id", "served_by", "arm",
    "fallback_reason", "key_name", "finish_reasons", "request_params", "request_id", "input_tokens",
    "output_tokens", "ttft_s", "cohort_confidence", "evals",
    "client", "upstream", "model", "seconds", "upstream_status",
    "blocks",
    "root", "attempt", "ok", "pending", "client_closed", "traceparent", "tracestate",
};
static PyObject *S[N_COUNT];

/* the Python builders of missing blocks (tracing_attrs._attempt_block, _root_block, _hashable), and
   the Python encoder (tracing_attrs.encode_request) for the shapes this one declines */
static PyObject *attempt_block_fn, *root_block_fn, *hashable_fn, *py_encode_request_fn;

/* ------------------------------------------------------------------ trace state */

/* A recorded request's tracing state (tracing.py `_Req`, whose Python class is the reference):
   set on its RequestRecord as `rec.trace` when the request starts; `rec` is set when it ends
   and cleared once its spans are encoded (the rec <-> state cycle exists only meanwhile, and the
   collector can break it: the type takes part in GC). Times are integers in nanoseconds: `start`
   wall clock (time.time_ns), `t0` the same instant on time.perf_counter_ns's clock. */
typedef struct {
    PyObject_HEAD
    PyObject *rec, *trace_id, *span_id, *attempt_ids, *parent_id, *tracestate, *content;
    long long start, t0, end;
} TraceState;

static PyTypeObject TraceStateType;

static long long clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* TraceState(trace_id, span_id, attempt_id | None, parent_id | None, tracestate | None) */
static PyObject *TraceState_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 5 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "TraceState(trace_id, span_id, attempt_id, parent_id, tracestate)");
        return NULL;
    }
    PyObject *ids = args[2] == Py_None ? PyList_New(0) : PyList_New(1);
    if (ids == NULL) return NULL;
    if (args[2] != Py_None) PyList_SET_ITEM(ids, 0, Py_NewRef(args[2]));
    TraceState *ts = PyObject_GC_New(TraceState, &TraceStateType);
    if (ts == NULL) {
        Py_DECREF(ids);
        return NULL;
    }
    ts->rec = Py_NewRef(Py_None);
    ts->trace_id = Py_NewRef(args[0]);
    ts->span_id = Py_NewRef(args[1]);
    ts->attempt_ids = ids;
    ts->parent_id = Py_NewRef(args[3]);
    ts->tracestate = Py_NewRef(args[4]);
    ts->content = Py_NewRef(Py_None);
    ts->start = clock_ns(CLOCK_REALTIME);
    ts->t0 = clock_ns(CLOCK_MONOTONIC); /* time.perf_counter_ns's clock: attempts' t0 are on it */
    ts->end = 0;
    PyObject_GC_Track(ts);
    return (PyObject *)ts;
}

static PyObject *TraceState_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "TraceState takes positional arguments only");
        return NULL;
    }
    return TraceState_vectorcall((PyObject *)type, &PyTuple_GET_ITEM(args, 0), (size_t)PyTuple_GET_SIZE(args),
                                 NULL);
}

static int TraceState_traverse(TraceState *self, visitproc visit, void *arg) {
    Py_VISIT(self->rec);
    Py_VISIT(self->attempt_ids);
    Py_VISIT(self->content);
    return 0;
}

static int TraceState_clear(TraceState *self) {
    Py_CLEAR(self->rec);
    Py_CLEAR(self->attempt_ids);
    Py_CLEAR(self->content);
    return 0;
}

static void TraceState_dealloc(TraceState *self) {
    PyObject_GC_UnTrack(self);
    TraceState_clear(self);
    Py_CLEAR(self->trace_id);
    Py_CLEAR(self->span_id);
    Py_CLEAR(self->parent_id);
    Py_CLEAR(self->tracestate);
    PyObject_GC_Del(self);
}

static PyObject *encode_request(PyObject *req, PyObject *rec, PyObject *enc);

/* encode(encoder) -> (framed spans, count): this request's spans, once (it lets go of the record) */
static PyObject *TraceState_encode(TraceState *self, PyObject *enc) {
    PyObject *rec = self->rec;
    if (rec == NULL || rec == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "TraceState.encode: the request has not finished (rec is None)");
        return NULL;
    }
    self->rec = Py_NewRef(Py_None); /* encoded: no rec <-> state cycle from here on */
    PyObject *out = encode_request((PyObject *)self, rec, enc);
    if (out == Py_None) {
        Py_DECREF(out);
        PyObject *args[3] = {(PyObject *)self, rec, enc};
        out = PyObject_Vectorcall(py_encode_request_fn, args, 3, NULL);
    }
    Py_DECREF(rec);
    return out;
}

static PyObject *make_traceparent(PyObject *trace_id, PyObject *span_id, int sampled);

/* propagate(headers, span_id): traceparent (with span_id as the parent) and tracestate for a call */
static PyObject *TraceState_propagate(TraceState *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "propagate(headers, span_id)");
        return NULL;
    }
    PyObject *tp = make_traceparent(self->trace_id, args[1], 1);
    if (tp == NULL) return NULL;
    int err = PyObject_SetItem(args[0], S[S_traceparent], tp);
    Py_DECREF(tp);
    if (err < 0) return NULL;
    if (self->tracestate != NULL && self->tracestate != Py_None) {
        int t = PyObject_IsTrue(self->tracestate);
        if (t < 0 || (t && PyObject_SetItem(args[0], S[S_tracestate], self->tracestate) < 0)) return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef TraceState_methods[] = {
    {"encode", (PyCFunction)TraceState_encode, METH_O,
     "encode(encoder) -> (framed spans, count); the record is let go"},
    {"propagate", (PyCFunction)(void (*)(void))TraceState_propagate, METH_FASTCALL,
     "propagate(headers, span_id): set traceparent (and tracestate) for an upstream call"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef TraceState_members[] = {
    {"rec", T_OBJECT, offsetof(TraceState, rec), 0, "the RequestRecord, from finish() until encoded"},
    {"trace_id", T_OBJECT, offsetof(TraceState, trace_id), READONLY, NULL},
    {"span_id", T_OBJECT, offsetof(TraceState, span_id), READONLY, "the request (SERVER) span's id"},
    {"attempt_ids", T_OBJECT, offsetof(TraceState, attempt_ids), 0, "span ids of attempt 1, 2..."},
    {"parent_id", T_OBJECT, offsetof(TraceState, parent_id), READONLY, "the caller's span id, or None"},
    {"tracestate", T_OBJECT, offsetof(TraceState, tracestate), READONLY, NULL},
    {"content", T_OBJECT, offsetof(TraceState, content), 0, "recorded prompt/completion attributes, or None"},
    {"start", T_LONGLONG, offsetof(TraceState, start), 0, "time.time_ns() at the start"},
    {"t0", T_LONGLONG, offsetof(TraceState, t0), 0, "time.perf_counter_ns() at the start"},
    {"end", T_LONGLONG, offsetof(TraceState, end), 0, "time.time_ns() at the end; 0 until finished"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TraceStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._spanenc.TraceState",
    .tp_doc = "A recorded request's tracing state (tracing.py's _Req, compiled).",
    .tp_basicsize = sizeof(TraceState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = TraceState_new,
    .tp_vectorcall = TraceState_vectorcall,
    .tp_traverse = (traverseproc)TraceState_traverse,
    .tp_clear = (inquiry)TraceState_clear,
    .tp_dealloc = (destructor)TraceState_dealloc,
    .tp_methods = TraceState_methods,
    .tp_members = TraceState_members,
};

/* ------------------------------------------------------------------ output buffer */

typedef struct {
    unsigned char *p;
    Py_ssize_t len, cap;
    unsigned char inline_[2048];
} Buf;

static void buf_init(Buf *b) {
    b->p = b->inline_;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof(b->inline_);
}

static void buf_free(Buf *b) {
    if (b->p != b->inline_) PyMem_Free(b->p);
}

/* room for `more` bytes; the put* writers below assume it */
static int buf_reserve(Buf *b, Py_ssize_t more) {
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

/* Span.attributes (field 9) KeyValue{key, value: AnyValue{int_value}}: size, then writer */
static Py_ssize_t kv_int_len(Py_ssize_t klen, uint64_t v) {
    Py_ssize_t av = 1 + varint_len(v);
    Py_ssize_t inner = 1 + varint_len((uint64_t)klen) + klen + 1 + varint_len((uint64_t)av) + av;
    return 1 + varint_len((uint64_t)inner) + inner;
}

static void put_kv_int(Buf *b, const char *key, Py_ssize_t klen, uint64_t v) {
    Py_ssize_t av = 1 + varint_len(v);
    Py_ssize_t inner = 1 + varint_len((uint64_t)klen) + klen + 1 + varint_len((uint64_t)av) + av;
    put1(b, 0x4a);
    put_varint(b, (uint64_t)inner);
    put1(b, 0x0a);
    put_varint(b, (uint64_t)klen);
    put(b, key, klen);
    put1(b, 0x12);
    put_varint(b, (uint64_t)av);
    put1(b, 0x18);
    put_varint(b, v);
}

/* ... AnyValue{string_value} */
static Py_ssize_t kv_str_len(Py_ssize_t klen, Py_ssize_t n) {
    Py_ssize_t av = 1 + varint_len((uint64_t)n) + n;
    Py_ssize_t inner = 1 + varint_len((uint64_t)klen) + klen + 1 + varint_len((uint64_t)av) + av;
    return 1 + varint_len((uint64_t)inner) + inner;
}

static void put_kv_str(Buf *b, const char *key, Py_ssize_t klen, const char *s, Py_ssize_t n) {
    Py_ssize_t av = 1 + varint_len((uint64_t)n) + n;
    Py_ssize_t inner = 1 + varint_len((uint64_t)klen) + klen + 1 + varint_len((uint64_t)av) + av;
    put1(b, 0x4a);
    put_varint(b, (uint64_t)inner);
    put1(b, 0x0a);
    put_varint(b, (uint64_t)klen);
    put(b, key, klen);
    put1(b, 0x12);
    put_varint(b, (uint64_t)av);
    put1(b, 0x0a);
    put_varint(b, (uint64_t)n);
    put(b, s, n);
}

/* ... AnyValue{double_value} (fixed64) */
static Py_ssize_t kv_double_len(Py_ssize_t klen) {
    Py_ssize_t inner = 1 + varint_len((uint64_t)klen) + klen + 1 + 1 + 9;
    return 1 + varint_len((uint64_t)inner) + inner;
}

static void put_kv_double(Buf *b, const char *key, Py_ssize_t klen, double v) {
    Py_ssize_t inner = 1 + varint_len((uint64_t)klen) + klen + 1 + 1 + 9;
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    put1(b, 0x4a);
    put_varint(b, (uint64_t)inner);
    put1(b, 0x0a);
    put_varint(b, (uint64_t)klen);
    put(b, key, klen);
    put1(b, 0x12);
    put1(b, 9);
    put1(b, 0x21);
    put_u64le(b, bits);
}

/* ------------------------------------------------------------------ encode_request */

#define KEY(s) s, (Py_ssize_t)(sizeof(s) - 1)
static const char K_REQUEST_ID[] = "cohortgate.request_id";
static const char K_TTFT[] = "gen_ai.response.time_to_first_chunk";
/* the token attributes, in tracing_attrs's order */
static const char K_TIN[] = "gen_ai.usage.input_tokens";
static const char K_PROMPT[] = "llm.token_count.prompt";
static const char K_TOUT[] = "gen_ai.usage.output_tokens";
static const char K_COMPLETION[] = "llm.token_count.completion";
static const char K_TOTAL[] = "llm.token_count.total";

static int is_str(PyObject *o, int name) {
    return PyUnicode_Check(o) && PyUnicode_Compare(o, S[name]) == 0;
}

/* `a or b` on the two (borrowed) values: a new reference */
static PyObject *or_(PyObject *a, PyObject *b) {
    int t = PyObject_IsTrue(a);
    if (t < 0) return NULL;
    PyObject *r = t ? a : b;
    Py_INCREF(r);
    return r;
}

static int as_ll(PyObject *o, long long *out) {
#if LONG_MAX >= 0x7FFFFFFFFFFFFFFFLL
    *out = PyLong_AsLong(o); /* its digit loop is several times cheaper than PyLong_AsLongLong's */
#else
    *out = PyLong_AsLongLong(o);
#endif
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* Fields are read straight from the slots of the classes given to `slots()` (RequestRecord,
   Attempt, the trace state): PyObject_GetAttr costs ~150 instructions per field, which was half
   of this encoder's time. Other types (or an unset slot, which then raises AttributeError) go
   through PyObject_GetAttr. */
#define MAX_TYPES 4
static PyTypeObject *slot_types[MAX_TYPES];
static Py_ssize_t slot_off[MAX_TYPES][N_COUNT]; /* 0: not a plain object slot of that type */
static int n_slot_types;

static PyObject *get(PyObject *o, int name) {
    PyTypeObject *t = Py_TYPE(o);
    for (int i = 0; i < n_slot_types; i++) {
        if (slot_types[i] != t) continue;
        Py_ssize_t off = slot_off[i][name];
        if (off) {
            PyObject *v = *(PyObject **)((char *)o + off);
            if (v != NULL) {
                Py_INCREF(v);
                return v;
            }
        }
        break;
    }
    return PyObject_GetAttr(o, S[name]);
}

/* a cached block or, on a miss, what the Python builder makes (and caches): a new reference.
   With `unhashable`, a key that does not hash sets it and returns NULL with no exception set. */
static PyObject *block(PyObject *blocks, PyObject *key, PyObject *build_fn, PyObject *const *build_args,
                       size_t nargs, int *unhashable) {
    PyObject *blk = PyDict_GetItemWithError(blocks, key);
    if (blk != NULL) {
        Py_INCREF(blk);
    } else {
        if (PyErr_Occurred()) {
            if (unhashable != NULL && PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                *unhashable = 1;
            }
            return NULL;
        }
        blk = PyObject_Vectorcall(build_fn, build_args, nargs, NULL);
        if (blk == NULL) return NULL;
    }
    if (!PyBytes_Check(blk)) {
        PyErr_SetString(PyExc_TypeError, "span block is not bytes");
        Py_DECREF(blk);
        return NULL;
    }
    return blk;
}

/* One CLIENT span per upstream attempt, appended to `out`. Returns -1 on error. */
static int encode_attempts(Buf *out, PyObject *rec, PyObject *enc, PyObject *blocks,
                           PyObject *attempts, PyObject *aids, const char *tid, const char *sid,
                           long long rstart, long long rend, long long rt0, PyObject *operation,
                           PyObject *r_outcome, PyObject *r_error_type, PyObject *served_by,
                           PyObject *response_model, int stream) {
    Py_ssize_t last = PyList_GET_SIZE(attempts);
    for (Py_ssize_t i = 0; i < last && i < PyList_GET_SIZE(attempts); i++) {
        int rc = -1;
        PyObject *att = PyList_GET_ITEM(attempts, i);
        Py_INCREF(att);
        PyObject *a_outcome = NULL, *a_t0 = NULL, *upstream = NULL, *client = NULL, *model = NULL;
        PyObject *ustatus = NULL, *outcome = NULL, *n_obj = NULL, *key = NULL, *blk = NULL, *seconds = NULL;
        Py_ssize_t n = i + 1;
        long long start = rstart, end = rend, at0;
        if (!(a_outcome = get(att, N_outcome)) || !(a_t0 = get(att, N_t0)) || as_ll(a_t0, &at0) < 0) goto next;
        if (at0) start += at0 - rt0; /* on the request's clock: its start plus the monotonic offset */
        if (stream && n == last && is_str(a_outcome, S_ok)) {
            /* the relayed stream's attempt: ok unless the stream failed after its first event */
            if (is_str(r_outcome, S_ok) || is_str(r_outcome, S_client_closed)) {
                outcome = S[S_ok];
                Py_INCREF(outcome);
            } else if (!(outcome = or_(r_error_type, r_outcome))) {
                goto next;
            }
        } else if (is_str(a_outcome, S_pending)) { /* left by an exception: ends with the request */
            if (!(outcome = or_(r_error_type, r_outcome))) goto next;
        } else {
            outcome = a_outcome;
            Py_INCREF(outcome);
            if (at0) {
                if (!(seconds = get(att, N_seconds))) goto next;
                double s = PyFloat_AsDouble(seconds);
                if (s == -1.0 && PyErr_Occurred()) goto next;
                long long e = start + (long long)(s * 1e9);
                if (e < end) end = e;
            }
        }
        if (!(upstream = get(att, N_upstream)) || !(client = get(att, N_client)) || !(model = get(att, N_model)) ||
            !(ustatus = get(att, N_upstream_status)) || !(n_obj = PyLong_FromSsize_t(n)))
            goto next;
        int served = 0;
        if (is_str(outcome, S_ok)) {
            served = PyObject_RichCompareBool(served_by, upstream, Py_EQ);
            if (served < 0) goto next;
        }
        PyObject *rm = served ? response_model : Py_None;
        key = PyTuple_Pack(9, S[S_attempt], operation, client, upstream, model, n_obj, outcome, ustatus, rm);
        if (key == NULL) goto next;
        PyObject *args[7] = {enc, key, rec, att, n_obj, outcome, served ? Py_True : Py_False};
        if (!(blk = block(blocks, key, attempt_block_fn, args, 7, NULL))) goto next;
        if (n > PyList_GET_SIZE(aids)) { /* an attempt the proxy did not announce: an id of its own */
            PyObject *sid_new = new_id(8);
            if (sid_new == NULL) goto next;
            int err = PyList_Append(aids, sid_new);
            Py_DECREF(sid_new);
            if (err < 0) goto next;
        }
        PyObject *aid = PyList_GET_ITEM(aids, n - 1);
        if (!PyBytes_Check(aid) || PyBytes_GET_SIZE(aid) != 8) {
            PyErr_SetString(PyExc_ValueError, "attempt span id is not 8 bytes");
            goto next;
        }
        /* ScopeSpans.spans(2) { trace_id, span_id, parent_span_id: 38 bytes; block; times: 18 } */
        Py_ssize_t blen = PyBytes_GET_SIZE(blk), body = 56 + blen;
        if (buf_reserve(out, 11 + body) < 0) goto next;
        put1(out, 0x12);
        put_varint(out, (uint64_t)body);
        put1(out, 0x0a), put1(out, 0x10), put(out, tid, 16);
        put1(out, 0x12), put1(out, 0x08), put(out, PyBytes_AS_STRING(aid), 8);
        put1(out, 0x22), put1(out, 0x08), put(out, sid, 8);
        put(out, PyBytes_AS_STRING(blk), blen);
        put_times(out, start, end);
        rc = 0;
    next:
        Py_DECREF(att);
        Py_XDECREF(a_outcome), Py_XDECREF(a_t0), Py_XDECREF(upstream), Py_XDECREF(client), Py_XDECREF(model);
        Py_XDECREF(ustatus), Py_XDECREF(outcome), Py_XDECREF(n_obj), Py_XDECREF(key), Py_XDECREF(blk);
        Py_XDECREF(seconds);
        if (rc < 0) return -1;
    }
    return 0;
}

/* the request span's cache key (tracing_attrs.encode_request's `rkey`), a new reference */
static PyObject *root_key(PyObject *rec, PyObject *attempts, PyObject *operation, PyObject *r_outcome,
                          PyObject *r_error_type, PyObject *served_by, PyObject *response_model, PyObject *stream) {
    static const int from_rec[] = {-1, N_operation, N_alias, N_stream, N_outcome, -1, N_mirrored, N_status, -1,
                                   N_response_model, N_served_model, N_error_type, N_cohort, N_cohort_reason,
                                   N_route_id, N_served_by, N_arm, N_fallback_reason, N_key_name, -1,
                                   N_request_params};
    enum { SIZE = sizeof(from_rec) / sizeof(from_rec[0]) };
    PyObject *key = PyTuple_New(SIZE);
    if (key == NULL) return NULL;
    Py_ssize_t last = PyList_GET_SIZE(attempts);
    for (Py_ssize_t i = 0; i < SIZE; i++) {
        PyObject *v;
        switch (i) {
            case 0: v = S[S_root], Py_INCREF(v); break;
            case 1: v = operation, Py_INCREF(v); break;
            case 3: v = stream, Py_INCREF(v); break;
            case 4: v = r_outcome, Py_INCREF(v); break;
            case 5: v = PyLong_FromSsize_t(last); break;
            case 8: v = last ? get(PyList_GET_ITEM(attempts, last - 1), N_client) : (Py_INCREF(Py_None), Py_None);
                break;
            case 9: v = response_model, Py_INCREF(v); break;
            case 11: v = r_error_type, Py_INCREF(v); break;
            case 15: v = served_by, Py_INCREF(v); break;
            case 19: {
                PyObject *fr = get(rec, N_finish_reasons);
                v = fr ? PySequence_Tuple(fr) : NULL;
                Py_XDECREF(fr);
                break;
            }
            default: v = get(rec, from_rec[i]);
        }
        if (v == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        PyTuple_SET_ITEM(key, i, v);
    }
    return key;
}

static int bytes_of(PyObject *o, Py_ssize_t size) { return PyBytes_Check(o) && PyBytes_GET_SIZE(o) == size; }

/* encode_request(req, rec, enc) -> (bytes, span count) | None: see the header comment */
static PyObject *encode_request(PyObject *req, PyObject *rec, PyObject *enc) {
    if (attempt_block_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "gateway._spanenc.configure() was not called");
        return NULL;
    }
    PyObject *result = NULL;
    Buf out;
    buf_init(&out);
    enum { tid, sid, aids, pid, content, start, end, t0, attempts, operation, stream, outcome, error_type,
           served_by, response_model, request_id, tin, tout, ttft, confidence, evals, blocks, rkey, blk, NV };
    static const int attr[NV] = {N_trace_id, N_span_id, N_attempt_ids, N_parent_id, N_content, N_start, N_end,
                                 N_t0};
    PyObject *v[NV] = {NULL};
    long long rstart, rend, rt0;
    if (Py_IS_TYPE(req, &TraceStateType)) { /* the compiled trace state: its fields directly */
        TraceState *ts = (TraceState *)req;
        PyObject *f[] = {ts->trace_id, ts->span_id, ts->attempt_ids, ts->parent_id, ts->content};
        for (int i = tid; i <= content; i++) v[i] = Py_NewRef(f[i] ? f[i] : Py_None);
        rstart = ts->start, rend = ts->end, rt0 = ts->t0;
    } else {
        for (int i = tid; i <= t0; i++)
            if (!(v[i] = get(req, attr[i]))) goto done;
        if (as_ll(v[start], &rstart) < 0 || as_ll(v[end], &rend) < 0 || as_ll(v[t0], &rt0) < 0) goto done;
    }
    static const int rattr[] = {N_attempts, N_operation, N_stream, N_outcome, N_error_type, N_served_by,
                                N_response_model, N_request_id, N_input_tokens, N_output_tokens, N_ttft_s,
                                N_cohort_confidence, N_evals};
    for (int i = attempts; i <= evals; i++)
        if (!(v[i] = get(rec, rattr[i - attempts]))) goto done;
    if (!(v[blocks] = get(enc, N_blocks))) goto done;

    /* the shapes left to the Python encoder */
    int has_content = PyObject_IsTrue(v[content]), has_evals = PyObject_IsTrue(v[evals]);
    if (has_content < 0 || has_evals < 0) goto done;
    if (has_content || has_evals || v[confidence] != Py_None || !PyLong_CheckExact(v[tin]) ||
        !PyLong_CheckExact(v[tout]) || (v[ttft] != Py_None && !PyFloat_CheckExact(v[ttft])) ||
        !bytes_of(v[tid], 16) || !bytes_of(v[sid], 8) || (v[pid] != Py_None && !bytes_of(v[pid], 8)) ||
        !PyList_CheckExact(v[attempts]) || !PyList_Check(v[aids]) || !PyDict_CheckExact(v[blocks]) ||
        !PyUnicode_Check(v[request_id])) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    Py_ssize_t rid_len;
    const char *rid = PyUnicode_AsUTF8AndSize(v[request_id], &rid_len);
    if (rid == NULL) { /* not encodable as is (lone surrogates): the Python path replaces them */
        PyErr_Clear();
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    int is_stream = PyObject_IsTrue(v[stream]);
    if (is_stream < 0) goto done;
    const char *tid_b = PyBytes_AS_STRING(v[tid]), *sid_b = PyBytes_AS_STRING(v[sid]);
    if (encode_attempts(&out, rec, enc, v[blocks], v[attempts], v[aids], tid_b, sid_b, rstart, rend, rt0,
                        v[operation], v[outcome], v[error_type], v[served_by], v[response_model], is_stream) < 0)
        goto done;
    Py_ssize_t last = PyList_GET_SIZE(v[attempts]);

    /* the request (SERVER) span */
    if (!(v[rkey] = root_key(rec, v[attempts], v[operation], v[outcome], v[error_type], v[served_by],
                             v[response_model], v[stream])))
        goto done;
    PyObject *rargs[4] = {enc, NULL, rec, req};
    rargs[1] = v[rkey];
    int unhashable = 0;
    v[blk] = block(v[blocks], v[rkey], root_block_fn, rargs, 4, &unhashable);
    if (v[blk] == NULL) {
        if (!unhashable) goto done;
        /* a list-valued request parameter (`stop`) does not hash: the key takes its hashable form */
        PyObject *h = PyObject_CallOneArg(hashable_fn, PyTuple_GET_ITEM(v[rkey], 20));
        if (h == NULL) goto done;
        PyObject *k2 = PyTuple_GetSlice(v[rkey], 0, 20), *tail = k2 ? PyTuple_Pack(1, h) : NULL;
        Py_DECREF(h);
        Py_XSETREF(v[rkey], (k2 && tail) ? PySequence_Concat(k2, tail) : NULL);
        Py_XDECREF(k2), Py_XDECREF(tail);
        if (v[rkey] == NULL) goto done;
        rargs[1] = v[rkey];
        if (!(v[blk] = block(v[blocks], v[rkey], root_block_fn, rargs, 4, NULL))) goto done;
    }
    uint64_t in = PyLong_AsUnsignedLongLongMask(v[tin]), ou = PyLong_AsUnsignedLongLongMask(v[tout]);
    if (PyErr_Occurred()) goto done;
    Py_ssize_t blen = PyBytes_GET_SIZE(v[blk]);
    Py_ssize_t body = 28 + blen + 18 + kv_str_len(sizeof(K_REQUEST_ID) - 1, rid_len) +
                      (v[pid] != Py_None ? 10 : 0) + kv_int_len(sizeof(K_TIN) - 1, in) +
                      kv_int_len(sizeof(K_PROMPT) - 1, in) + kv_int_len(sizeof(K_TOUT) - 1, ou) +
                      kv_int_len(sizeof(K_COMPLETION) - 1, ou) + kv_int_len(sizeof(K_TOTAL) - 1, in + ou) +
                      (v[ttft] != Py_None ? kv_double_len(sizeof(K_TTFT) - 1) : 0);
    if (buf_reserve(&out, 11 + body) < 0) goto done;
    Py_ssize_t mark = out.len;
    put1(&out, 0x12);
    put_varint(&out, (uint64_t)body);
    put1(&out, 0x0a), put1(&out, 0x10), put(&out, tid_b, 16);
    put1(&out, 0x12), put1(&out, 0x08), put(&out, sid_b, 8);
    put(&out, PyBytes_AS_STRING(v[blk]), blen);
    put_times(&out, rstart, rend);
    put_kv_str(&out, KEY(K_REQUEST_ID), rid, rid_len);
    if (v[pid] != Py_None) put1(&out, 0x22), put1(&out, 0x08), put(&out, PyBytes_AS_STRING(v[pid]), 8);
    put_kv_int(&out, KEY(K_TIN), in);
    put_kv_int(&out, KEY(K_PROMPT), in);
    put_kv_int(&out, KEY(K_TOUT), ou);
    put_kv_int(&out, KEY(K_COMPLETION), ou);
    put_kv_int(&out, KEY(K_TOTAL), in + ou);
    if (v[ttft] != Py_None) put_kv_double(&out, KEY(K_TTFT), PyFloat_AS_DOUBLE(v[ttft]));
    if (out.len - mark != 1 + varint_len((uint64_t)body) + body) {
        PyErr_SetString(PyExc_SystemError, "_spanenc: request span length mismatch");
        goto done;
    }
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)out.p, out.len);
    if (bytes == NULL) goto done;
    PyObject *count = PyLong_FromSsize_t(last + 1);
    if (count == NULL || (result = PyTuple_New(2)) == NULL) {
        Py_DECREF(bytes);
        Py_XDECREF(count);
        goto done;
    }
    PyTuple_SET_ITEM(result, 0, bytes);
    PyTuple_SET_ITEM(result, 1, count);

done:
    for (int i = 0; i < NV; i++) Py_XDECREF(v[i]);
    buf_free(&out);
    return result;
}

static PyObject *py_encode_request(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode_request(req, rec, encoder)");
        return NULL;
    }
    return encode_request(args[0], args[1], args[2]);
}

static PyObject *py_configure(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1]) || !PyCallable_Check(args[2]) ||
        !PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "configure(attempt_block, root_block, hashable, encode_request): "
                                         "four callables");
        return NULL;
    }
    Py_XSETREF(attempt_block_fn, Py_NewRef(args[0]));
    Py_XSETREF(root_block_fn, Py_NewRef(args[1]));
    Py_XSETREF(hashable_fn, Py_NewRef(args[2]));
    Py_XSETREF(py_encode_request_fn, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

static PyObject *py_slots(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs > MAX_TYPES) {
        PyErr_Format(PyExc_TypeError, "slots(): at most %d classes", MAX_TYPES);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        if (!PyType_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "slots(): classes only");
            return NULL;
        }
    }
    for (int i = 0; i < n_slot_types; i++) Py_CLEAR(slot_types[i]);
    n_slot_types = 0;
    memset(slot_off, 0, sizeof(slot_off));
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyTypeObject *t = (PyTypeObject *)args[i];
        for (int name = 0; name < N_COUNT; name++) {
            PyObject *d = PyObject_GetAttr((PyObject *)t, S[name]); /* a member descriptor for a slot */
            if (d == NULL) {
                PyErr_Clear();
                continue;
            }
            if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
                PyMemberDef *md = ((PyMemberDescrObject *)d)->d_member;
                if (md->type == T_OBJECT_EX && md->offset > 0) slot_off[i][name] = md->offset;
            }
            Py_DECREF(d);
        }
        Py_INCREF(t);
        slot_types[i] = t;
        n_slot_types = (int)i + 1;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"ids", py_ids, METH_NOARGS, "ids() -> (trace_id: 16 bytes, span_id: 8 bytes, span_id: 8 bytes), none all-zero"},
    {"span_id", py_span_id, METH_NOARGS, "span_id() -> 8 random bytes, not all zero"},
    {"traceparent", (PyCFunction)(void (*)(void))py_traceparent, METH_FASTCALL,
     "traceparent(trace_id, span_id, sampled) -> the W3C traceparent header value"},
    {"encode_request", (PyCFunction)(void (*)(void))py_encode_request, METH_FASTCALL,
     "encode_request(req, rec, encoder) -> (framed spans, count), or None for the shapes the Python "
     "encoder handles"},
    {"slots", (PyCFunction)(void (*)(void))py_slots, METH_FASTCALL,
     "slots(*classes): read these __slots__ classes' fields directly (the record, attempt and trace state)"},
    {"configure", (PyCFunction)(void (*)(void))py_configure, METH_FASTCALL,
     "configure(attempt_block, root_block, hashable): the Python builders of uncached blocks"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "gateway._spanenc", "Compiled fast path of request tracing (see _spanenc.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__spanenc(void) {
    for (int i = 0; i < N_COUNT; i++) {
        if (S[i] == NULL && (S[i] = PyUnicode_InternFromString(NAMES[i])) == NULL) return NULL;
    }
    if (pthread_atfork(NULL, NULL, pool_reset_in_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    if (PyType_Ready(&TraceStateType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "TraceState", (PyObject *)&TraceStateType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
