"""Actor runtime: wasm module inspection and admission (pure), the waPC host, sandbox workers."""
