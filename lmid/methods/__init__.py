"""Every method behind one interface (see :mod:`lmid.methods.base`), listed in
:mod:`lmid.registry`.

Each module is imported only when its method is asked for, so that ``lmid translate --method
identity`` does not pay for importing the GAN code.
"""

from __future__ import annotations

from lmid.methods.base import Access, Method, TrainingData, Translation
from lmid.registry import METHOD_NAMES, METHODS, spec


def method_class(name: str) -> type[Method]:
    """The class of method ``name`` (one plain import each, so readers and tools can follow it)."""
    spec(name)  # an unknown name fails here, with the known ones
    if name == "lmidiffusion":
        from lmid.methods.lmidiffusion import LmiDiffusion as cls
    elif name == "sdedit":
        from lmid.methods.sdedit import SDEdit as cls
    elif name == "cyclegan":
        from lmid.methods.cyclegan import CycleGan as cls
    elif name == "stylegan2":
        from lmid.methods.stylegan2 import StyleGan2 as cls
    elif name == "cdm":
        from lmid.methods.cdm import Cdm as cls
    elif name == "synthseg":
        from lmid.methods.synthseg import SynthSeg as cls
    elif name == "identity":
        from lmid.methods.references import Identity as cls
    elif name == "histmatch":
        from lmid.methods.references import HistMatch as cls
    else:
        raise KeyError(f"lmid/methods/__init__.py: no class for method {name!r} of lmid/registry.py")
    return cls


def get_method(name: str) -> Method:
    return method_class(name)()


__all__ = ["Access", "METHODS", "METHOD_NAMES", "Method", "TrainingData", "Translation", "get_method", "method_class"]
