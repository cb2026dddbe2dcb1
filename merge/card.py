"""Model card (README.md) for a merge output: YAML front matter that hubs and `merge.sources`
read back (base_model, datasets, tags), the config used, and the provenance summary."""

from __future__ import annotations

from typing import Any

import yaml


def render(record: dict[str, Any], config_yaml: str) -> str:
    sources = record["sources"]
    base = record.get("base_model")
    datasets: list[str] = []
    for s in sources:
        for d in (s.get("lineage") or {}).get("training_data", []) or []:
            if isinstance(d, str) and d not in datasets:
                datasets.append(d)
    meta: dict[str, Any] = {"tags": ["merge", "cohortgate", record["method"]["name"]],
                            "library_name": "transformers"}
    if base:
        meta["base_model"] = base
    if datasets:
        meta["datasets"] = datasets
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# Merged model ({record['method']['name']})", "",
             f"Merged with cohortgate {record['tool']['version']} on {record['finished_at']}.", "",
             "## Sources", ""]
    for s in sources:
        lin = s.get("lineage") or {}
        decl = ", ".join(map(str, lin.get("training_data", []))) or "none declared"
        lines.append(f"- `{s['path']}`{' + LoRA `' + s['lora']['path'] + '`' if s.get('lora') else ''}"
                     f" — training data: {decl}")
    if record.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in record["warnings"]]
    lines += ["", "## Configuration", "", "```yaml", config_yaml.strip(), "```", "",
              "Full provenance (shard hashes, parameters, seed, timestamps): `provenance.json`; check it with "
              "`cohortgate merge verify <dir>`.", ""]
    return "\n".join(lines)
