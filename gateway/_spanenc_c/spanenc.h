/* Shared declarations of gateway._spanenc, the compiled fast path of request tracing:
   ids.c (ids and traceparent), state.c (TraceState), encode.c (span encoding), module.c. */

#ifndef COHORTGATE_SPANENC_H
#define COHORTGATE_SPANENC_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX, T_LONGLONG */

#include <stdint.h>

/* attribute names and constants, interned at import (module.c) */
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
extern PyObject *se_names[N_COUNT];

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

extern PyTypeObject se_TraceStateType;

/* ids.c */
PyObject *se_new_id(size_t n);
PyObject *se_traceparent(PyObject *trace_id, PyObject *span_id, int sampled);
void se_pool_reset_in_child(void);
PyObject *se_py_ids(PyObject *m, PyObject *unused);
PyObject *se_py_span_id(PyObject *m, PyObject *unused);
PyObject *se_py_traceparent(PyObject *m, PyObject *const *args, Py_ssize_t nargs);

/* encode.c */
extern PyObject *se_py_encode_request_fn;
PyObject *se_encode_request(PyObject *req, PyObject *rec, PyObject *enc);
PyObject *se_py_encode_request(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
PyObject *se_py_configure(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
PyObject *se_py_slots(PyObject *m, PyObject *const *args, Py_ssize_t nargs);

#endif
