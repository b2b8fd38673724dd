"""Path methods: the registry (registry.py), the contract every method follows (base.py), and one module
per built-in method: LLPF's searches (llpf.py; the algorithm itself in llpf_core/llpf/), linear, bezier
and rebasin. Plugins register more the same way (docs/writing-a-method.md)."""
