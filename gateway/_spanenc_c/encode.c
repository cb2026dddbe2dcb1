/* The OTLP protobuf of a client request's spans: its SERVER span and one CLIENT span per
   upstream attempt, the same bytes as gateway/tracing_attrs.py `encode_request` (the reference)
   for the usual request shapes; None for the others (recorded content, evaluation events, a
   classifier confidence, non-integer token counts), which then take the Python path. The span
   blocks that repeat across requests are the Python encoder's cache (`Encoder.blocks`), shared
   by both paths and filled by the Python builders given to `configure()`. */

#include "spanenc.h"
#include "pb.h"

#include <limits.h>
#include <string.h>

/* ------------------------------------------------------------------ encode_request */

/* the Python builders of missing blocks (tracing_attrs._attempt_block, _root_block, _hashable), and
   the Python encoder (tracing_attrs.encode_request) for the shapes this one declines */
static PyObject *attempt_block_fn, *root_block_fn, *hashable_fn;
PyObject *se_py_encode_request_fn;

#define KEY(s) s, KLEN(s)
#define KLEN(k) ((Py_ssize_t)sizeof(k) - 1)
static const char K_REQUEST_ID[] = "cohortgate.request_id";
static const char K_TTFT[] = "gen_ai.response.time_to_first_chunk";
/* the token attributes, in tracing_attrs's order */
static const char K_TIN[] = "gen_ai.usage.input_tokens";
static const char K_PROMPT[] = "llm.token_count.prompt";
static const char K_TOUT[] = "gen_ai.usage.output_tokens";
static const char K_COMPLETION[] = "llm.token_count.completion";
static const char K_TOTAL[] = "llm.token_count.total";

static int is_str(PyObject *o, int name) {
    return PyUnicode_Check(o) && PyUnicode_Compare(o, se_names[name]) == 0;
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
    return PyObject_GetAttr(o, se_names[name]);
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
                outcome = se_names[S_ok];
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
        key = PyTuple_Pack(9, se_names[S_attempt], operation, client, upstream, model, n_obj, outcome, ustatus, rm);
        if (key == NULL) goto next;
        PyObject *args[7] = {enc, key, rec, att, n_obj, outcome, served ? Py_True : Py_False};
        if (!(blk = block(blocks, key, attempt_block_fn, args, 7, NULL))) goto next;
        if (n > PyList_GET_SIZE(aids)) { /* an attempt the proxy did not announce: an id of its own */
            PyObject *sid_new = se_new_id(8);
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
            case 0: v = se_names[S_root], Py_INCREF(v); break;
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

/* se_encode_request(req, rec, enc) -> (bytes, span count) | None: see the header comment */
PyObject *se_encode_request(PyObject *req, PyObject *rec, PyObject *enc) {
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
    if (Py_IS_TYPE(req, &se_TraceStateType)) { /* the compiled trace state: its fields directly */
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
    Py_ssize_t body = 28 + blen + 18 + kv_len(KLEN(K_REQUEST_ID), av_str(rid_len)) +
                      (v[pid] != Py_None ? 10 : 0) + kv_len(KLEN(K_TIN), av_int(in)) +
                      kv_len(KLEN(K_PROMPT), av_int(in)) + kv_len(KLEN(K_TOUT), av_int(ou)) +
                      kv_len(KLEN(K_COMPLETION), av_int(ou)) + kv_len(KLEN(K_TOTAL), av_int(in + ou)) +
                      (v[ttft] != Py_None ? kv_len(KLEN(K_TTFT), AV_DOUBLE) : 0);
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

PyObject *se_py_encode_request(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "se_encode_request(req, rec, encoder)");
        return NULL;
    }
    return se_encode_request(args[0], args[1], args[2]);
}

PyObject *se_py_configure(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1]) || !PyCallable_Check(args[2]) ||
        !PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "configure(attempt_block, root_block, hashable, encode_request): "
                                         "four callables");
        return NULL;
    }
    Py_XSETREF(attempt_block_fn, Py_NewRef(args[0]));
    Py_XSETREF(root_block_fn, Py_NewRef(args[1]));
    Py_XSETREF(hashable_fn, Py_NewRef(args[2]));
    Py_XSETREF(se_py_encode_request_fn, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

PyObject *se_py_slots(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
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
            PyObject *d = PyObject_GetAttr((PyObject *)t, se_names[name]); /* a member descriptor for a slot */
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
