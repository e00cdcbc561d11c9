"""Dataset examples: each filter's top natural images in a folder, found in one resumable pass.

`filterviz.exemplars(model, data=...)` from Python (filterviz/api.py); `python -m filterviz.exemplars`
from the command line. The package is that callable too, as filterviz.atlas is (see there why).
The core (reading, top k, quantiles, crops) is filterviz/core/exemplars.py.
"""

import sys
import types


class _CallableExemplars(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from filterviz.api import exemplars

        return exemplars(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableExemplars
