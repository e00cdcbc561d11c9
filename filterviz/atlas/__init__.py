"""The atlas: every filter of a network, its pictures and figures on one page, resumable.

`filterviz.atlas(model, ...)` makes one from Python (filterviz/api.py); `python -m filterviz.atlas`
from the command line. This package is that callable too: `filterviz.atlas` is both the name
users call and the package that holds the atlas's code, and a package attribute would hide a
function of the same name once the package is imported.
"""

import sys
import types


class _CallableAtlas(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from filterviz.api import atlas

        return atlas(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableAtlas
