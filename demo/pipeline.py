"""`cohortgate demo`: the whole loop on real models, one command.

Stages (each cached where it can be; keys include data and code versions):
  1. models    base model + two LoRA specialists (billing, policy), with training provenance
  2. merge     `cohortgate merge`: both adapters folded into the base and combined (task arithmetic),
               with provenance; and the compatibility check refusing an incompatible pair
  3. serve     vLLM on CPU: one server with the base + both adapters as separate names, one with the
               candidate; health-waited, logs kept, always stopped
  4. eval      `cohortgate eval run` over the cohort dataset for base, billing, policy, candidate;
               `cohortgate eval report` (terminal table + HTML)
  5. promote   `cohortgate promote`: the candidate takes only the cohorts it wins; held cohorts mirror a
               slice to it; fallback to the specialist each cohort came from; `policy check`
  6. gateway   `cohortgate serve` with the promoted policy, a burst of openai-SDK traffic, feedback,
               Prometheus when installed; then serve until Ctrl-C (or exit with --no-serve)
Every number printed comes from the run itself; a candidate that wins nothing is reported as such.
The commands run are the same CLI a user runs, and are echoed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.stages import StageView

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "evals" / "datasets" / "support_cohorts.jsonl"
COHORTS = ("billing_refund", "policy_exception", "out_of_domain", "tool_required")


@dataclass
class Options:
    fast: bool
    serve: bool
    port: int
    workdir: Path
    rows_per_cohort: int | None
    max_tokens: int
    concurrency: int


class DemoError(RuntimeError):
    pass


def code_hash(*packages: str) -> str:
    """A hash of the Python sources of the packages that produce an artifact (its code version)."""
    h = hashlib.sha256()
    for pkg in packages:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cg(view: StageView, *args: str, check: bool = True, capture: bool = False, timeout: float = 3600
       ) -> subprocess.CompletedProcess[str]:
    """Run a cohortgate CLI command (echoed), in this interpreter's environment."""
    view.say(f"[dim]$ cohortgate {' '.join(args)}")
    r = subprocess.run([sys.executable, "-m", "cohortgate", *args], text=True, timeout=timeout,
                       capture_output=capture, cwd=ROOT)
    if check and r.returncode != 0:
        detail = (r.stderr or r.stdout or "")[-2000:] if capture else ""
        raise DemoError(f"`cohortgate {args[0]} {args[1] if len(args) > 1 else ''}` failed with exit code "
                        f"{r.returncode}. {detail}")
    return r


# ---------------------------------------------------------------- 1. models
def stage_models(view: StageView, opts: Options) -> Any:
    from demo.specialists import build_models, summary

    with view.stage("models: base + LoRA specialists") as st:
        models = build_models(fast=opts.fast, progress=True)
        view.say(summary(models))
        st.note = ", ".join(f"{n} {'cached' if r.cached else 'trained'}" for n, r in models.adapters.items())
    return models


# ---------------------------------------------------------------- 2. merge
def merge_config(models: Any, method: str = "task_arithmetic") -> str:
    base = models.base
    lines = [f"merge_method: {method}", f"base_model: {base}", "models:"]
    for r in models.adapters.values():
        lines += [f"  - model: {base}+{r.adapter_dir}", "    parameters:", "      weight: 1.0"]
    lines += ["parameters:", "  normalize: false", "dtype: float32", "out_dtype: bfloat16", "tokenizer_source: base"]
    return "\n".join(lines) + "\n"


def incompatible_model(base: Path, out: Path) -> Path:
    """A checkpoint that cannot be merged with the base: same tensor names, another hidden size."""
    import numpy as np
    from safetensors.numpy import save_file

    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((base / "config.json").read_text())
    cfg["hidden_size"] = int(cfg["hidden_size"]) * 2
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / f).exists():
            shutil.copy2(base / f, out / f)
    save_file({"model.embed_tokens.weight": np.zeros((8, cfg["hidden_size"]), dtype=np.float32)},
              str(out / "model.safetensors"))
    return out


def stage_merge(view: StageView, opts: Options, models: Any) -> Path:
    from demo.cache import cache_root

    with view.stage("merge: specialists -> candidate (cohortgate merge)") as st:
        cfg_text = merge_config(models)
        adapters = {n: sha_file(r.adapter_dir / "adapter_model.safetensors") for n, r in models.adapters.items()}
        key = hashlib.sha256(json.dumps({"cfg": cfg_text, "adapters": adapters, "code": code_hash("merge")},
                                        sort_keys=True).encode()).hexdigest()[:12]
        out = cache_root() / "demo" / ("fast" if opts.fast else "full") / f"candidate-{key}"
        cfg_path = opts.workdir / "merge.yaml"
        cfg_path.write_text(cfg_text)
        if (out / "provenance.json").exists() and cg(view, "merge", "verify", str(out), check=False,
                                                      capture=True).returncode == 0:
            st.note = "cached (provenance verified)"
        else:
            cg(view, "merge", str(cfg_path), str(out), "--force")
        # The compatibility check, before any tensor is read: an incompatible pair is refused.
        foreign = incompatible_model(models.base, opts.workdir / "incompatible-model")
        bad = opts.workdir / "merge-incompatible.yaml"
        bad.write_text(f"merge_method: linear\nmodels:\n  - model: {models.base}\n    parameters: {{weight: 1.0}}\n"
                       f"  - model: {foreign}\n    parameters: {{weight: 1.0}}\ndtype: float32\n")
        r = cg(view, "merge", str(bad), str(opts.workdir / "never-written"), "--dry-run", check=False, capture=True)
        if r.returncode == 0:
            raise DemoError("the merge tool accepted an incompatible pair; refusing to continue")
        view.say("[yellow]refused as expected:[/] " + (r.stderr or r.stdout).strip().splitlines()[0][:300])
        st.note = (st.note + "; " if st.note else "") + "incompatible pair refused"
    return out


# ---------------------------------------------------------------- 3. serve
@contextlib.contextmanager
def stage_serve(view: StageView, opts: Options, models: Any, candidate: Path) -> Any:
    from demo.vllm_env import ensure_vllm_env
    from demo.vllm_server import vllm_server

    with contextlib.ExitStack() as stack:
        with view.stage("serve: vLLM on CPU (base + adapters, candidate)") as st:
            python = ensure_vllm_env()
            logs = opts.workdir / "logs"
            # ~25-50 s on an idle machine; a saturated 2-core box needs minutes
            wait = float(os.environ.get("COHORTGATE_VLLM_READY_TIMEOUT", "900"))
            cms = [vllm_server(models.base, "base", loras=models.lora_modules(), log=logs / "vllm-sources.log",
                               cpu_bind="0", python=python, ready_timeout=wait),
                   vllm_server(candidate, "candidate", log=logs / "vllm-candidate.log", cpu_bind="1", python=python,
                               ready_timeout=wait)]
            # start both at once (each waits for its own /health), stop both whatever happens
            with ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(cm.__enter__) for cm in cms]
                servers = []
                errors = []
                for cm, fut in zip(cms, futures, strict=True):
                    try:
                        servers.append(fut.result())
                        stack.push(cm.__exit__)
                    except Exception as exc:
                        errors.append(exc)
                if errors:
                    raise DemoError(f"a vLLM server did not start: {errors[0]}")
            sources, cand = servers
            view.say(f"sources: {sources.base_url} serving {', '.join(sources.served_names)} "
                     f"(ready in {sources.ready_seconds}s, log {sources.log})")
            view.say(f"candidate: {cand.base_url} (ready in {cand.ready_seconds}s, log {cand.log})")
            st.note = f"ready in {max(sources.ready_seconds, cand.ready_seconds):.0f}s"
        yield {"base": (sources.base_url, "base"), "billing": (sources.base_url, "billing"),
               "policy": (sources.base_url, "policy"), "candidate": (cand.base_url, "candidate")}


# ---------------------------------------------------------------- 4. eval
def dataset_slice(opts: Options) -> Path:
    if opts.rows_per_cohort is None:
        return DATASET
    by: dict[str, int] = {}
    lines = []
    for line in DATASET.read_text().splitlines():
        c = json.loads(line)["cohort"]
        if by.get(c, 0) < opts.rows_per_cohort:
            by[c] = by.get(c, 0) + 1
            lines.append(line)
    out = opts.workdir / f"dataset-{opts.rows_per_cohort}-per-cohort.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def stage_eval(view: StageView, opts: Options, servers: dict[str, tuple[str, str]], candidate: Path,
               models: Any) -> Path:
    with view.stage("eval: every cohort, every model (cohortgate eval run + report)") as st:
        data = dataset_slice(opts)
        # The run directory's name is a key of everything that decides its rows, so a warm run
        # resumes with nothing left to do, and any change starts a fresh run.
        key = hashlib.sha256(json.dumps({
            "data": sha_file(data), "candidate": json.loads((candidate / "provenance.json").read_text()).get(
                "output", {}), "adapters": {n: sha_file(r.adapter_dir / "adapter_model.safetensors")
                                            for n, r in models.adapters.items()},
            "base": str(models.base), "code": code_hash("evals"), "max_tokens": opts.max_tokens,
        }, sort_keys=True, default=str).encode()).hexdigest()[:12]
        run = opts.workdir / f"run-{key}"
        args = ["eval", "run", "--dataset", str(data), "--out", str(run), "--concurrency", str(opts.concurrency),
                "--max-tokens", str(opts.max_tokens), "--support", "lexical" if opts.fast else "embedding"]
        for name, (url, served) in servers.items():
            args += ["--model", f"{name}={url}:{served}"]
        cg(view, *args)
        cg(view, "eval", "report", str(run), "--candidate", "candidate", "--base", "base",
           "--sources", "billing,policy")
        st.note = f"{sum(1 for _ in data.open())} rows x {len(servers)} models -> {run.name}"
    return run


# ---------------------------------------------------------------- 5. promote
def stage_promote(view: StageView, opts: Options, servers: dict[str, tuple[str, str]], run: Path,
                  candidate: Path) -> tuple[Path, dict[str, Any]]:
    from demo.policy_gen import current_policy, write_yaml

    with view.stage("promote: route only the cohorts the candidate wins") as st:
        current = write_yaml(opts.workdir / "policy.current.yaml",
                             current_policy(servers, opts.workdir / "shadow.jsonl"))
        promoted = opts.workdir / "policy.promoted.yaml"
        args = ["promote", "--run", str(run), "--candidate", "candidate", "--policy", str(current),
                "--out", str(promoted), "--provenance", str(candidate / "provenance.json"), "--base", "base",
                "--sources", "billing,policy", "--mirror-holds", "20"]
        if opts.fast:
            args += ["--min-rows", str(max(2, opts.rows_per_cohort or 2))]
        cg(view, *args)
        cg(view, "policy", "check", str(promoted))
        decisions = json.loads(promoted.with_suffix(".decisions.json").read_text())
        won = [d["cohort"] for d in decisions["decisions"] if d["promote"]]
        view.say(f"candidate wins: {', '.join(won) if won else 'nothing (every cohort stays where it was)'}")
        st.note = f"promoted {len(won)}/{len(decisions['decisions'])} cohorts"
    return promoted, decisions


# ---------------------------------------------------------------- 6. gateway
@contextlib.contextmanager
def background(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})}, cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"{proc.args[0]} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise DemoError(f"{url} not ready after {timeout}s; see {log}")


def stage_gateway(view: StageView, opts: Options, promoted: Path, servers: dict[str, tuple[str, str]],
                  run: Path, summary: dict[str, Any]) -> None:
    from demo import traffic
    from demo.policy_gen import prometheus_config
    from evals.dataset import load_dataset

    with contextlib.ExitStack() as stack:
        with view.stage("gateway: live traffic through the promoted policy") as st:
            gw = f"http://127.0.0.1:{opts.port}"
            log = opts.workdir / "logs" / "gateway.log"
            proc = stack.enter_context(background([sys.executable, "-m", "cohortgate", "serve", "--policy",
                                                   str(promoted), "--port", str(opts.port)], log))
            wait_ready(gw + "/readyz", proc, log)
            prom_url = None
            prom = shutil.which("prometheus")
            if prom:
                pport = free_port()
                vllm_addrs = {n: url.split("//", 1)[1].split("/", 1)[0] for n, (url, _s) in servers.items()
                              if n in ("base", "candidate")}
                cfg = prometheus_config(f"127.0.0.1:{opts.port}", vllm_addrs, f"127.0.0.1:{pport}",
                                        opts.workdir / "prometheus.yml")
                pproc = stack.enter_context(background([prom, f"--config.file={cfg}",
                                                        f"--storage.tsdb.path={opts.workdir / 'prometheus-data'}",
                                                        f"--web.listen-address=127.0.0.1:{pport}"],
                                                       opts.workdir / "logs" / "prometheus.log"))
                wait_ready(f"http://127.0.0.1:{pport}/-/ready", pproc, opts.workdir / "logs" / "prometheus.log")
                prom_url = f"http://127.0.0.1:{pport}"
            rows = traffic.pick_rows(load_dataset(DATASET), 2 if opts.fast else 4)
            sent = traffic.burst(gw + "/v1", rows, opts.max_tokens)
            fb = traffic.send_feedback(gw, sent)
            time.sleep(1.0)  # mirrored calls finish off the critical path
            metrics = traffic.fetch(gw + "/metrics")
            (opts.workdir / "gateway-metrics.txt").write_text(metrics)
            by = traffic.traffic_by_cohort_and_model(metrics)
            ok = sum(1 for s in sent if s.status == "ok")
            view.say(_traffic_table(sent))
            view.say("requests by cohort x model (cohortgate_requests_total): " +
                     ", ".join(f"{c}/{m}={v:g}" for (c, m), v in sorted(by.items())))
            st.note = f"{ok}/{len(sent)} answered, {fb} feedback signals"
            summary["gateway"] = {"url": gw + "/v1", "metrics": gw + "/metrics", "prometheus": prom_url,
                                  "requests": [s.__dict__ for s in sent],
                                  "traffic_by_cohort_model": {f"{c}|{m}": v for (c, m), v in by.items()},
                                  "shadow_log": str(opts.workdir / "shadow.jsonl"), "log": str(log)}
            traffic.write_json(opts.workdir / "demo-summary.json", summary)
        view.say(_where_to_look(summary, run))
        if opts.serve:
            view.say("[bold]serving until Ctrl-C[/] (model servers, gateway"
                     + (" and Prometheus" if prom_url else "") + " stop with it)")
            try:
                while proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                view.say("stopping ...")


def _traffic_table(sent: list[Any]) -> Any:
    from rich.table import Table

    t = Table(title="traffic burst (openai SDK -> gateway)")
    for col in ("row", "expected", "cohort", "served by", "arm", "stream", "s", "status"):
        t.add_column(col)
    for s in sent:
        t.add_row(s.row_id, s.expected, s.cohort, s.upstream, s.arm, "yes" if s.streamed else "", f"{s.seconds}",
                  s.status if s.status == "ok" else f"[red]{s.status}")
    return t


def _where_to_look(summary: dict[str, Any], run: Path) -> str:
    g = summary["gateway"]
    lines = ["", "[bold]Where to look[/]",
             f"  OpenAI base_url:   {g['url']}  (model 'support-assistant', any api key)",
             f"  metrics:           {g['metrics']}",
             f"  eval report:       {run / 'report.html'}",
             f"  promoted policy:   {summary['promoted_policy']}  (decisions: {summary['decisions_md']})",
             f"  shadow pairs:      {g['shadow_log']}  (cohortgate eval run --shadow ... turns it into a run)",
             "  traces:            set OTEL_EXPORTER_OTLP_ENDPOINT before `cohortgate demo` to export spans"]
    if g["prometheus"]:
        lines.insert(4, f"  Prometheus:        {g['prometheus']}  (e.g. sum by (cohort, model) "
                        "(cohortgate_requests_total))")
    return "\n".join(lines)


# ---------------------------------------------------------------- the whole loop
def run_demo(opts: Options) -> int:
    view = StageView(total=6)
    opts.workdir.mkdir(parents=True, exist_ok=True)
    view.say(f"[bold]cohortgate demo[/] ({'fast: tiny local models' if opts.fast else 'SmolLM2-135M-Instruct'}) "
             f"-> {opts.workdir}")
    summary: dict[str, Any] = {"mode": "fast" if opts.fast else "full", "workdir": str(opts.workdir)}
    t0 = time.monotonic()
    try:
        models = stage_models(view, opts)
        summary["adapters"] = {n: str(r.adapter_dir / "provenance.json") for n, r in models.adapters.items()}
        candidate = stage_merge(view, opts, models)
        summary["candidate"] = str(candidate)
        summary["candidate_provenance"] = str(candidate / "provenance.json")
        with stage_serve(view, opts, models, candidate) as servers:
            run = stage_eval(view, opts, servers, candidate, models)
            summary["run"] = str(run)
            summary["report_html"] = str(run / "report.html")
            promoted, decisions = stage_promote(view, opts, servers, run, candidate)
            summary["promoted_policy"] = str(promoted)
            summary["decisions_md"] = str(promoted.with_suffix(".decisions.md"))
            summary["decisions"] = decisions["decisions"]
            stage_gateway(view, opts, promoted, servers, run, summary)
    except DemoError as exc:
        view.console.print(view.summary())
        view.say(f"[red]demo failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        view.say("[yellow]interrupted; every process this demo started has been stopped")
        return 130
    summary["seconds"] = round(time.monotonic() - t0, 1)
    summary["stages"] = [{"name": s.name, "seconds": round(s.seconds, 1), "note": s.note} for s in view.stages]
    (opts.workdir / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    view.console.print(view.summary())
    return 0
