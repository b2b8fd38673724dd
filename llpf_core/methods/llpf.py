"""LLPF's searches as registered path methods; the algorithm is connect.LLPF (docs/algorithm.md).

Their settings are the LLPF fields of ``SearchConfig`` (phases, train, ...), from the model's preset;
cross_sphere's bridge stage has its own (``bridge.*``)."""
from ..config import BridgeSpec
from ..connect import LLPF
from .registry import register_method

register_method("m2m", preset_family="m2m",
                description="LLPF mode to mode: move toward the end mode, correct each layer's variance, train")(LLPF)
register_method("m2o", needs_end=False, preset_family="m2o", needs_preset=True,
                description="LLPF mode to origin: shrink toward the origin, or onto the end mode's sphere")(LLPF)
register_method("to_vs", preset_family="m2o", needs_preset=True,
                description="LLPF onto the end mode's variance sphere (radial projection, every tick)")(LLPF)
register_method("cross_sphere", settings=BridgeSpec, prefix="bridge", preset_family="m2m", needs_preset=True,
                description="LLPF across spheres: a to_vs (or m2o) bridge onto the end's sphere, then m2m")(LLPF)
