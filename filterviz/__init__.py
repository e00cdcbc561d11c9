"""filterviz: see what the filters of a convolutional network respond to.

`filterviz.render(model, layer=..., filters=..., **settings)` runs the command's job from Python,
`filterviz.atlas(model, ...)` the atlas command's, `filterviz.exemplars(model, data=...)` the dataset
examples' (filterviz/api.py); imported on first use, so
`import filterviz` stays light.
"""

__version__ = "0.1.0"

from filterviz.core.hardware import keep_xla_compilations, share_gpus  # noqa: E402

share_gpus()  # before TensorFlow first uses a GPU, in every process that runs filterviz: parallel jobs share one
keep_xla_compilations()  # before TensorFlow first compiles with XLA


def __getattr__(name):
    if name in ("atlas", "exemplars"):  # the packages, callable (filterviz/atlas/__init__.py)
        import importlib

        return importlib.import_module(f"filterviz.{name}")
    if name in ("render", "Render", "Atlas", "Examples"):
        from filterviz import api

        return getattr(api, name)
    raise AttributeError(f"module 'filterviz' has no attribute {name!r}")
