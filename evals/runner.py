"""The offline runner: every dataset row x every model through OpenAI-compatible endpoints.

Contract:
  - bounded concurrency (N workers share one pooled aiohttp session);
  - retries with exponential backoff + jitter on connect errors, timeouts, 429 and 5xx
    (Retry-After honoured up to 10 s); other 4xx fail at once;
  - each result is scored by every applicable evaluator and appended to RUN_DIR/results.jsonl
    as it arrives (group fsync); a row whose request failed after retries is written with an
    `error` and a failing score for each applicable evaluator (errors count against the model);
  - resumable: (row_id, model) pairs already written without error are skipped, so an
    interrupted run continues where it stopped; errored pairs are retried and the newest row
    wins. run.json pins the dataset hash and evaluator settings so a resume cannot mix runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from evals.dataset import Row, load_dataset
from evals.evaluators import DEFAULT_THRESHOLDS, Evaluator, Output, build
from evals.evaluators.grounding import Mode
from evals.judge import JudgeClient
from evals.result import EvalInputError
from evals.runfile import (
    FORMAT_VERSION,
    RESULTS,
    ResultsWriter,
    RunError,
    now_iso,
    read_meta,
    read_rows,
    sha256_file,
    write_meta,
)

_SPEC = re.compile(r"^(https?://[^/:\s]+(?::\d+)?(?:/[^:\s]*)?)(?::(\S+))?$")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    base_url: str
    served: str

    @staticmethod
    def parse(spec: str) -> ModelSpec:
        name, sep, rest = spec.partition("=")
        m = _SPEC.match(rest.strip()) if sep else None
        if not name.strip() or m is None:
            raise RunError(
                f"--model {spec!r}: expected NAME=BASE_URL[:served_name], "
                "e.g. candidate=http://127.0.0.1:8000/v1:Qwen/Qwen2.5-0.5B"
            )
        return ModelSpec(name.strip(), m.group(1).rstrip("/"), m.group(2) or name.strip())


@dataclass
class RunConfig:
    dataset: Path
    models: list[ModelSpec]
    out: Path
    concurrency: int = 8
    api_key_env: str | None = None
    evaluators: list[str] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    support: Mode = "embedding"
    judge: JudgeClient | None = None
    max_retries: int = 4
    timeout_s: float = 120.0
    temperature: float | None = 0.0
    max_tokens: int | None = None
    progress: bool = True


@dataclass
class RunSummary:
    total: int
    skipped: int
    done: int
    errors: int
    elapsed_s: float

    @property
    def rows_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _prepare(cfg: RunConfig) -> tuple[list[Row], list[Evaluator], set[tuple[str, str]]]:
    if not cfg.models:
        raise RunError("give at least one --model NAME=BASE_URL[:served_name]")
    names = [m.name for m in cfg.models]
    if len(set(names)) != len(names):
        raise RunError(f"--model names must be unique, got {names}")
    rows = load_dataset(cfg.dataset)
    evs = build(cfg.evaluators, cfg.thresholds, cfg.support, cfg.judge)
    cfg.out.mkdir(parents=True, exist_ok=True)
    meta = read_meta(cfg.out)
    digest = sha256_file(cfg.dataset)
    ev_cfg = {e.name: e.threshold for e in evs}
    models = {m.name: {"base_url": m.base_url, "served_model": m.served} for m in cfg.models}
    if meta:
        if meta.get("dataset_sha256") != digest:
            raise RunError(f"{cfg.out} holds a run of a different dataset (sha256 differs); use a new --out")
        if meta.get("evaluators") != ev_cfg or meta.get("support") != cfg.support:
            raise RunError(
                f"{cfg.out} was run with evaluators {meta.get('evaluators')} (support "
                f"{meta.get('support')}); resume with the same settings or use a new --out"
            )
        for n, m in models.items():
            old = meta.get("models", {}).get(n)
            if old and old["served_model"] != m["served_model"]:
                raise RunError(f"model {n!r} was run as {old['served_model']!r}; now {m['served_model']!r}")
        models = {**meta.get("models", {}), **models}
    write_meta(
        cfg.out,
        {
            "v": FORMAT_VERSION,
            "kind": "dataset",
            "dataset": str(cfg.dataset),
            "dataset_sha256": digest,
            "models": models,
            "evaluators": ev_cfg,
            "support": cfg.support,
            "created": meta.get("created") or now_iso(),
            "updated": now_iso(),
        },
    )
    done = {(str(r["row_id"]), str(r["model"])) for r in read_rows(cfg.out / RESULTS) if not r.get("error")}
    return rows, evs, done


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], cfg: RunConfig
) -> tuple[dict[str, Any] | None, int, dict[str, str] | None, float]:
    err: dict[str, str] = {}
    for attempt in range(1, cfg.max_retries + 2):
        wait = min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random())
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as r:
                data = await r.read()
                ms = (time.perf_counter() - t0) * 1000
                if r.status == 200:
                    try:
                        return orjson.loads(data), attempt, None, ms
                    except orjson.JSONDecodeError:
                        return None, attempt, {"type": "bad_response", "message": "response is not JSON"}, ms
                err = {"type": f"http_{r.status}", "message": data[:300].decode("utf-8", "replace")}
                if r.status != 429 and r.status < 500:
                    return None, attempt, err, ms
                ra = r.headers.get("retry-after", "")
                if ra.replace(".", "", 1).isdigit():
                    wait = min(10.0, float(ra))
        except (TimeoutError, aiohttp.ClientError) as exc:
            err = {"type": type(exc).__name__, "message": str(exc)[:300] or type(exc).__name__}
        if attempt <= cfg.max_retries:
            await asyncio.sleep(wait)
    return None, cfg.max_retries + 1, err, 0.0


def score_row(row: Row, evs: list[Evaluator], output: Output | None, error: str | None) -> dict[str, Any]:
    scores: dict[str, Any] = {}
    for e in evs:
        if not e.applies(row):
            continue
        if output is None:
            scores[e.name] = {
                "score": 0.0,
                "passed": False,
                "reason": f"request failed: {error}",
                "threshold": e.threshold,
            }
        else:
            scores[e.name] = {**e.evaluate(row, output).as_dict(), "threshold": e.threshold}
    return scores


async def _one(
    session: aiohttp.ClientSession,
    cfg: RunConfig,
    row: Row,
    spec: ModelSpec,
    evs: list[Evaluator],
    headers: dict[str, str],
    offload: bool,
) -> dict[str, Any]:
    body = row.request_body(spec.served)
    if cfg.temperature is not None:
        body["temperature"] = cfg.temperature
    if cfg.max_tokens is not None:
        body["max_tokens"] = cfg.max_tokens
    resp, attempts, err, ms = await _post(
        session, spec.base_url + "/chat/completions", orjson.dumps(body), headers, cfg
    )
    output: Output | None = None
    out_rec: dict[str, Any] | None = None
    finish = None
    if resp is not None:
        try:
            choice = resp["choices"][0]
            output = Output.from_message(choice["message"])
            finish = choice.get("finish_reason")
            out_rec = {
                "content": output.content,
                "tool_calls": [{"name": n, "arguments": a} for n, a in output.tool_calls],
            }
        except (KeyError, IndexError, TypeError, EvalInputError) as exc:
            err = {"type": "bad_response", "message": f"not a chat completion: {exc}"}
            output = None
    usage = (resp or {}).get("usage") or {}
    if offload and output is not None:
        scores = await asyncio.to_thread(score_row, row, evs, output, None)
    else:
        scores = score_row(row, evs, output, (err or {}).get("message"))
    return {
        "v": FORMAT_VERSION,
        "row_id": row.id,
        "cohort": row.cohort,
        "model": spec.name,
        "gen_ai.request.model": spec.served,
        "gen_ai.response.model": (resp or {}).get("model"),
        "server.address": spec.base_url,
        "output": out_rec,
        "finish_reason": finish,
        "latency_ms": round(ms, 3),
        "attempts": attempts,
        "usage": {"input_tokens": usage.get("prompt_tokens"), "output_tokens": usage.get("completion_tokens")},
        "error": err if output is None else None,
        "scores": scores,
        "ts": now_iso(),
    }


async def run_async(cfg: RunConfig) -> RunSummary:
    rows, evs, done = _prepare(cfg)
    work = [(r, m) for r in rows for m in cfg.models if (r.id, m.name) not in done]
    total = len(rows) * len(cfg.models)
    headers = {"content-type": "application/json"}
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise RunError(f"--api-key-env {cfg.api_key_env}: that environment variable is not set")
        headers["authorization"] = f"Bearer {key}"
    offload = not all(e.deterministic for e in evs)  # model-based scoring must not stall the loop
    queue: asyncio.Queue[tuple[Row, ModelSpec]] = asyncio.Queue()
    for w in work:
        queue.put_nowait(w)
    out_q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    writer = ResultsWriter(cfg.out / RESULTS)
    errors = 0
    t0 = time.perf_counter()
    progress = _progress(cfg.progress, len(work), len(done))

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                row, spec = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await out_q.put(await _one(session, cfg, row, spec, evs, headers, offload))

    async def write_loop() -> None:
        nonlocal errors
        while True:
            batch = [await out_q.get()]
            while not out_q.empty():
                batch.append(out_q.get_nowait())
            rows_ = [b for b in batch if b is not None]
            await asyncio.to_thread(writer.write_many, rows_)
            errors += sum(1 for b in rows_ if b["error"])
            progress.advance(len(rows_))
            if None in batch:
                return

    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s, sock_connect=10)
    conn = aiohttp.TCPConnector(limit=cfg.concurrency, limit_per_host=cfg.concurrency)
    wtask = asyncio.create_task(write_loop())
    try:
        with progress:
            async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
                await asyncio.gather(*(worker(session) for _ in range(max(1, cfg.concurrency))))
            await out_q.put(None)
            await wtask
    finally:
        if not wtask.done():
            wtask.cancel()
        writer.close()
    return RunSummary(total, len(done), writer.written, errors, time.perf_counter() - t0)


class _Progress:
    """A rich progress bar, or nothing when disabled (tests, pipes)."""

    def __init__(self, enabled: bool, todo: int, skipped: int) -> None:
        self.bar: Any = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]eval[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task(f"({skipped} already scored)", total=todo)

    def __enter__(self) -> _Progress:
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def advance(self, n: int) -> None:
        if self.bar:
            self.bar.advance(self.task, n)


def _progress(enabled: bool, todo: int, skipped: int) -> _Progress:
    return _Progress(enabled, todo, skipped)


def run(cfg: RunConfig) -> RunSummary:
    return asyncio.run(run_async(cfg))


__all__ = ["DEFAULT_THRESHOLDS", "ModelSpec", "RunConfig", "RunSummary", "run", "run_async", "score_row"]
