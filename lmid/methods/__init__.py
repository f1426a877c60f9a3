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


def get_method(name: str) -> Method:
    if name not in _MODULES:
        from lmid.errors import ParamsError

        raise ParamsError(f"unknown method {name!r}; choose from {sorted(_MODULES)}")
    module = importlib.import_module(_MODULES[name])
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Method) and getattr(obj, "name", None) == name:
            return obj()
    raise ImportError(f"{_MODULES[name]} defines no Method subclass named {name!r}")


__all__ = ["Access", "Method", "TrainingData", "Translation", "get_method"]
