/* gateway._spanenc (module.c: names, method table, init): the compiled fast path of request tracing.

   What: trace and span ids, the W3C traceparent string, and the OTLP protobuf of a client
   request's spans (its SERVER span and one CLIENT span per upstream attempt).
   Why: in CPython each of these is dozens of interpreter operations (300-600 CPU instructions
   each), which made tracing every request cost ~15% of the gateway's own instructions per
   request, above the project's 10% budget; here they are a few hundred instructions each
   (docs/observability.md has the measurements).
   Reference: gateway/tracing_attrs.py `encode_request` and gateway/tracing_export.py stay the
   definition and the fallback (no compiler at install, COHORTGATE_PURE_PYTHON=1). encode.c
   writes the same bytes for the usual request shapes and returns None for the others (recorded
   content, evaluation events, a classifier confidence, non-integer token counts), which then
   take the Python path; tests/observability/test_spanenc.py checks the two byte for byte.
   Files: ids.c (ids from a getrandom pool, traceparent), state.c (the TraceState type),
   encode.c with pb.h (span encoding), spanenc.h (what they share). */

#include "spanenc.h"

#include <pthread.h>

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
PyObject *se_names[N_COUNT];

static PyMethodDef methods[] = {
    {"ids", se_py_ids, METH_NOARGS, "ids() -> (trace_id: 16 bytes, span_id: 8 bytes, span_id: 8 bytes), none all-zero"},
    {"span_id", se_py_span_id, METH_NOARGS, "span_id() -> 8 random bytes, not all zero"},
    {"traceparent", (PyCFunction)(void (*)(void))se_py_traceparent, METH_FASTCALL,
     "traceparent(trace_id, span_id, sampled) -> the W3C traceparent header value"},
    {"encode_request", (PyCFunction)(void (*)(void))se_py_encode_request, METH_FASTCALL,
     "se_encode_request(req, rec, encoder) -> (framed spans, count), or None for the shapes the Python "
     "encoder handles"},
    {"slots", (PyCFunction)(void (*)(void))se_py_slots, METH_FASTCALL,
     "slots(*classes): read these __slots__ classes' fields directly (the record, attempt and trace state)"},
    {"configure", (PyCFunction)(void (*)(void))se_py_configure, METH_FASTCALL,
     "configure(attempt_block, root_block, hashable, encode_request): the Python builders of uncached "
     "blocks, and the Python encoder for the shapes the compiled one declines"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "gateway._spanenc", "Compiled fast path of request tracing (gateway/_spanenc_c/).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__spanenc(void) {
    for (int i = 0; i < N_COUNT; i++) {
        if (se_names[i] == NULL && (se_names[i] = PyUnicode_InternFromString(NAMES[i])) == NULL) return NULL;
    }
    if (pthread_atfork(NULL, NULL, se_pool_reset_in_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    if (PyType_Ready(&se_TraceStateType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "TraceState", (PyObject *)&se_TraceStateType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
