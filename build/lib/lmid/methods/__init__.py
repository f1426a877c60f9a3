"""Every method behind one interface (see :mod:`lmid.methods.base`).

Modules are imported lazily so that ``lmid translate --method identity`` does not pay for
importing the GAN code.
"""

from __future__ import annotations

import importlib

from lmid.methods.base import Access, Method, TrainingData, Translation

_MODULES = {
    "lmidiffusion": "lmid.methods.lmidiffusion",
    "sdedit": "lmid.methods.sdedit",
    "cyclegan": "lmid.methods.cyclegan",
    "stylegan2": "lmid.methods.stylegan2",
    "cdm": "lmid.methods.cdm",
    "identity": "lmid.methods.references",
    "histmatch": "lmid.methods.references",
}

#: The params.yaml sections a method's training reads (besides ``seed``). Snakemake and DVC list
#: exactly these as the train step's params, and a checkpoint trained under other values of them
#: is not resumed.
TRAIN_PARAM_SECTIONS = {
    "lmidiffusion": ("diffusion", "lmi", "lmidiffusion"),
    "sdedit": ("diffusion", "sdedit"),
    "cyclegan": ("cyclegan",),
    "stylegan2": ("stylegan2", "lmi"),
    "cdm": ("cdm",),
    "identity": (),
    "histmatch": ("histmatch",),
}


def get_method(name: str) -> Method:
    if name not in _MODULES:
        from lmid.errors import ParamsError

        raise ParamsError(f"unknown method {name!r}; choose from {sorted(_MODULES)}")
    module = importlib.import_module(_MODULES[name])
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Method) and getattr(obj, "name", None) == name:
            return obj()
    raise ImportError(f"{_MODULES[name]} defines no Method subclass named {name!r}")


__all__ = ["Access", "Method", "TRAIN_PARAM_SECTIONS", "TrainingData", "Translation", "get_method"]
