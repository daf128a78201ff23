"""The compiler's passes, one module each; :mod:`servegraph.compiler.pipeline` says in what order they run."""
