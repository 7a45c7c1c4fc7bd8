"""The engine back ends, one module each; engines/registry.py finds them by engine.backend."""
