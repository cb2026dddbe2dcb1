"""Merge methods: one module per method, each a pure function over fp32 tensors documenting the
formula and the paper it implements, plus a small `Method` object the engine drives chunk by
chunk. `merge.methods.registry.METHODS` is the one explicit list (no import side effects)."""
