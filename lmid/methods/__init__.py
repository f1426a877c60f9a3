"""Every method behind one interface (see :mod:`lmid.methods.base`), listed in
:mod:`lmid.registry`.

Modules are imported lazily so that ``lmid translate --method identity`` does not pay for
importing the GAN code.
"""

from __future__ import annotations

import importlib

from lmid.methods.base import Access, Method, TrainingData, Translation
from lmid.registry import METHOD_NAMES, METHODS, spec


def get_method(name: str) -> Method:
    module = importlib.import_module(spec(name).module)
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Method) and obj is not Method and obj.name == name:
            return obj()
    raise ImportError(f"{spec(name).module} defines no Method subclass named {name!r}")


__all__ = ["Access", "METHODS", "METHOD_NAMES", "Method", "TrainingData", "Translation", "get_method"]
