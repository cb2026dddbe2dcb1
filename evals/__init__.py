"""evals: per-cohort evaluation of release candidates and promotion by cohort.

Modules: dataset (cohort JSONL rows), evaluators/ (offline scoring), inline (the gateway's hot-path
JSONValidation/ToolSelectionAccuracy), runner (every row x every model over OpenAI-compatible HTTP),
runfile (run directory format, see RUN_FORMAT.md), shadow (gateway mirror sink import), report/html/
stats (per-cohort tables with CIs), promote (per-cohort policy rewrite). Importing this package or
evals.inline imports nothing heavy; numpy/torch load only for embedding-based claim support.
"""
