"""tagcap: recurrent image annotation and captioning on one shared pipeline.

The Python API (see `tagcap.api`):

    import tagcap
    model = tagcap.load()                 # bundled models: Corel-5k words, ImageNet classes, a caption
    print(model.describe(["photo.jpg"]))

`import tagcap` alone loads nothing heavy: the API's names are imported on first use.
"""

__version__ = "0.1.0"

__all__ = ["load", "models", "Model", "Tag", "Description", "ModelInfo", "__version__"]


def __getattr__(name: str):
    if name in ("load", "models", "Model", "Tag", "Description", "ModelInfo"):
        from tagcap import api

        return getattr(api, name)
    raise AttributeError(f"module 'tagcap' has no attribute {name!r}")
