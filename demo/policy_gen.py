"""Files the demo writes for the live part: the current routing policy (before promotion) and a
Prometheus config derived from the one shipped in docker/.

The current policy is what a team would run before the merge: each cohort goes to the
specialist trained for it, with fallback to the base model. Upstream names equal the eval run's
model names, which is how `cohortgate promote` knows which model serves which cohort.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_PROMETHEUS = ROOT / "docker" / "prometheus" / "prometheus.yml"

COHORT_RULES: list[dict[str, Any]] = [
    {"name": "tool_required", "description": "the request offers tools",
     "rules": [{"header": {"name": "x-cohort", "equals": "tool_required"}}, {"has_tools": True}]},
    {"name": "billing_refund",
     "rules": [{"header": {"name": "x-cohort", "equals": "billing_refund"}},
               {"keywords": ["refund", "refunds", "refunded", "charge", "charged", "charges", "invoice", "invoices",
                             "billing", "billed", "overcharged", "prorated", "payment", "receipt", "credit"]}]},
    {"name": "policy_exception",
     "rules": [{"header": {"name": "x-cohort", "equals": "policy_exception"}},
               {"keywords": ["exception", "policy", "waive", "waiver", "extension", "extend", "allowed",
                             "allow", "deadline", "late", "transfer", "grace"]}]},
    {"name": "out_of_domain", "rules": [{"header": {"name": "x-cohort", "equals": "out_of_domain"}}]},
]


def current_policy(servers: dict[str, tuple[str, str]], shadow_log: Path) -> dict[str, Any]:
    """servers: run model name -> (base_url, served name)."""
    ups = {name: {"base_url": url, "model": served, "timeouts": {"connect": 2, "first_byte": 120, "total": 300},
                  "health": {"failures_to_eject": 5, "cooldown_s": 10, "probe_path": "/health"}}
           for name, (url, served) in servers.items()}
    return {
        "version": 1,
        "server": {"shadow_log": str(shadow_log)},
        "upstreams": ups,
        "models": [{"name": "support-assistant", "description": "customer support, routed by cohort"}],
        "cohorts": COHORT_RULES,
        "default_cohort": "out_of_domain",
        "routes": [
            {"id": "billing", "cohorts": ["billing_refund", "tool_required"],
             "targets": [{"upstream": "billing", "weight": 1}], "sticky": {"key": "user"}, "fallback": ["base"]},
            {"id": "policy", "cohorts": ["policy_exception", "out_of_domain"],
             "targets": [{"upstream": "policy", "weight": 1}], "fallback": ["base"]},
            {"id": "default", "cohorts": ["*"], "targets": [{"upstream": "base", "weight": 1}]},
        ],
    }


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def prometheus_config(gateway_addr: str, vllm_addrs: dict[str, str], prom_addr: str, out: Path) -> Path:
    """The shipped config with its scrape targets pointed at this machine's processes (jobs for
    services the demo does not run, such as the OTel collector, are left out)."""
    cfg = yaml.safe_load(SHIPPED_PROMETHEUS.read_text())
    cfg.setdefault("global", {})["scrape_interval"] = "2s"
    cfg["global"]["scrape_timeout"] = "2s"
    jobs = []
    for job in cfg.get("scrape_configs", []):
        name = str(job.get("job_name", ""))
        if name == "cohortgate":
            job["static_configs"] = [{"targets": [gateway_addr], "labels": {"component": "gateway"}}]
        elif name == "vllm":
            job["static_configs"] = [{"targets": [addr], "labels": {"component": "model-server", "model": model}}
                                     for model, addr in vllm_addrs.items()]
        elif name == "prometheus":
            job["static_configs"] = [{"targets": [prom_addr]}]
        else:
            continue
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    return write_yaml(out, cfg)
