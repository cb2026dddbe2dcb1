/* TraceState: a recorded request's tracing state (see spanenc.h), compiled. */

#include "spanenc.h"

#include <time.h>

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
    TraceState *ts = PyObject_GC_New(TraceState, &se_TraceStateType);
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

/* encode(encoder) -> (framed spans, count): this request's spans, once (it lets go of the record) */
static PyObject *TraceState_encode(TraceState *self, PyObject *enc) {
    PyObject *rec = self->rec;
    if (rec == NULL || rec == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "TraceState.encode: the request has not finished (rec is None)");
        return NULL;
    }
    self->rec = Py_NewRef(Py_None); /* encoded: no rec <-> state cycle from here on */
    PyObject *out = se_encode_request((PyObject *)self, rec, enc);
    if (out == Py_None) {
        Py_DECREF(out);
        PyObject *args[3] = {(PyObject *)self, rec, enc};
        out = PyObject_Vectorcall(se_py_encode_request_fn, args, 3, NULL);
    }
    Py_DECREF(rec);
    return out;
}

/* propagate(headers, span_id): traceparent (with span_id as the parent) and tracestate for a call */
static PyObject *TraceState_propagate(TraceState *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "propagate(headers, span_id)");
        return NULL;
    }
    PyObject *tp = se_traceparent(self->trace_id, args[1], 1);
    if (tp == NULL) return NULL;
    int err = PyObject_SetItem(args[0], se_names[S_traceparent], tp);
    Py_DECREF(tp);
    if (err < 0) return NULL;
    if (self->tracestate != NULL && self->tracestate != Py_None) {
        int t = PyObject_IsTrue(self->tracestate);
        if (t < 0 || (t && PyObject_SetItem(args[0], se_names[S_tracestate], self->tracestate) < 0)) return NULL;
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

PyTypeObject se_TraceStateType = {
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
