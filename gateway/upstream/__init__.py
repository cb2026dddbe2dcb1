"""Upstream clients: OpenAI-compatible HTTP servers (vLLM, ...) and hosted providers via litellm."""
