"""Routing policy: schema, loading with line-numbered errors, compilation."""
