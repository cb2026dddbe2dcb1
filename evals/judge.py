"""Optional LLM-judge mode for claim support, through any OpenAI-compatible endpoint.

Contract: `JudgeClient.supported(claims, evidence)` asks the judge model once per answer for
a JSON verdict per numbered claim and returns a list of booleans of the same length. A judge
that errors or answers off-format raises `JudgeError` (never a silent "unsupported").
Synchronous (urllib) on purpose: the runner calls evaluators from worker threads.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

PROMPT = (
    "You check whether claims are supported by evidence. A claim is supported only if the "
    "evidence states or directly implies it; numbers, amounts, dates and ids must match exactly.\n\n"
    "EVIDENCE:\n{evidence}\n\nCLAIMS:\n{claims}\n\n"
    'Answer with JSON only: {{"verdicts": [{{"claim": 1, "supported": true}}, ...]}} with one entry per claim.'
)


class JudgeError(RuntimeError):
    pass


@dataclass(frozen=True)
class JudgeClient:
    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0

    def supported(self, claims: list[str], evidence: list[str]) -> list[bool]:
        if not claims:
            return []
        prompt = PROMPT.format(
            evidence="\n---\n".join(evidence), claims="\n".join(f"{i}. {c}" for i, c in enumerate(claims, 1))
        )
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
            "response_format": {"type": "json_object"},
        }
        headers = {"content-type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(f"judge API key variable {self.api_key_env} is not set")
            headers["authorization"] = f"Bearer {key}"
        req = urllib.request.Request(
            self.base_url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                reply = json.loads(r.read())
            text = reply["choices"][0]["message"]["content"]
            verdicts = json.loads(text)["verdicts"]
            by_claim = {int(v["claim"]): bool(v["supported"]) for v in verdicts}
        except (urllib.error.URLError, OSError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise JudgeError(f"judge {self.model} at {self.base_url} failed: {exc}") from None
        if set(by_claim) != set(range(1, len(claims) + 1)):
            raise JudgeError(f"judge {self.model} returned verdicts for {sorted(by_claim)}, expected 1..{len(claims)}")
        return [by_claim[i] for i in range(1, len(claims) + 1)]
