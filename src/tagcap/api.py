"""The Python API: tags and captions for photos in three lines, with the bundled models or your own.

    import tagcap
    model = tagcap.load()                      # the default models, on a GPU if torch sees one
    for d in model.describe(["photo.jpg"]):
        print(d.caption, [t.label for t in d.tags])

Images may be file paths, the bytes of an image file (as read, or as an upload arrives), PIL
images in any mode (RGBA and LA over white, P, L, CMYK, 16-bit scaled to 8) or HWC uint8 arrays
(RGB, RGBA, or HW greyscale). Results are plain dataclasses;
`to_dict()` gives what `tagcap predict` writes. Nothing here imports training code or Lightning.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from tagcap.errors import DataError, TagcapError

__all__ = ["Tag", "CaptionObject", "Description", "ModelInfo", "Model", "load", "models"]


@dataclass(frozen=True)
class Tag:
    """One label for one image: its score and the model that gave it. Under the shown rule (the
    default) the score is a calibrated confidence (about 7 in 10 tags at 0.7 are right), `concept` its
    WordNet synset, `sources` each model's raw score for it and `broader` the named concepts above it
    (`Eskimo dog`: dog, animal); under a model's own rule they are empty."""

    label: str
    score: float
    source: str
    concept: str | None = None
    sources: dict[str, float] = field(default_factory=dict)
    broader: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CaptionObject:
    """A thing a caption names, with the taggers' evidence for it (None: no tagger can tell), the
    evidence that supports it, and whether it does (`tagcap.inference.grounding`)."""

    word: str
    concept: str
    name: str
    evidence: float | None
    support: float | None
    supported: bool | None


@dataclass
class Description:
    """What the models say about one image: its tags (under the shown rule one list, best first; under
    the models' own rules every annotator's, best first within each) and
    the caption (None without a captioner, or where it named what the taggers do not see: then
    `caption_withheld` says why), with the objects it names (`caption_objects`, under the shown rule);
    or, for an image that could not be read, `error` (what is wrong with it) and nothing else."""

    image: str
    tags: list[Tag] = field(default_factory=list)
    caption: str | None = None
    error: str | None = None
    caption_objects: list[CaptionObject] = field(default_factory=list)
    caption_withheld: str | None = None

    def to_dict(self) -> dict:
        """As `tagcap predict` writes it (`error`, `caption_objects`, `caption_withheld` only where
        there are some)."""
        d = asdict(self)
        for key in ("error", "caption_withheld"):
            if d[key] is None:
                del d[key]
        if not d["caption_objects"]:
            del d["caption_objects"]
        return d


@dataclass(frozen=True)
class ModelInfo:
    """A bundled model: what it does, what it was trained on, and its test metrics."""

    name: str
    task: str
    method: str
    labels: int
    trained_on: str | None
    metrics: dict       # test metrics as `tagcap evaluate` scores them (float32 backbone)
    metrics_int8: dict  # the same on the shipped int8 backbone, what `predict` runs on a CPU with VNNI
    metrics_bf16: dict  # a captioner's on it decoded in bfloat16, what `predict` runs on a CPU that has it
    summary: str
    default: bool
    size_mb: float
    card: str


def models() -> list[ModelInfo]:
    """The models shipped with tagcap, the defaults first (`tagcap models` prints the same)."""
    from tagcap.inference.bundled import bundled_names, model_info

    return [ModelInfo(**model_info(name)) for name in bundled_names()]


def load(*sources: str | Path, device: str = "auto", engine: str = "auto", views: int = 2, rule: str = "shown") -> "Model":
    """Models to tag and caption with: none named, the bundled defaults (Corel-5k words, ImageNet
    classes, a Flickr8k captioner); else checkpoint folders or bundled model names (`models()`).
    `device`: auto (a CUDA GPU if torch sees one), cpu, cuda or cuda:N. `engine`: auto (on an x86 CPU
    with VNNI or AMX, the 8-bit backbone shipped for the default models' backbone: the network about
    twice as fast, a folder of photos 1.3x, and a captioner decoded in bfloat16 where the CPU has it;
    float32 ONNX elsewhere and for other backbones), onnx (float32, as `tagcap evaluate` scores models), onnx-int8,
    channels_last or eager. `views`: 2 (each photo and its mirror image, scores averaged, as the
    models were evaluated) or 1 (about twice as fast). `rule`: shown (calibrated confidences, each
    concept once, few and right) or model (each model's own benchmark rule, model after model)."""
    from tagcap.inference.bundled import default_sources
    from tagcap.inference.taggers import ModelSet

    return Model(ModelSet.load(list(sources) or default_sources(), engine=engine, device=device, views=views,
                                 rule=rule))


def as_rgb(image, where: str = "image", reduce_to: int | None = None):
    """Any accepted image as an RGB PIL image, converted as `tagcap predict` converts files (a JPEG
    file much larger than `reduce_to` decoded at a reduced scale)."""
    from PIL import Image

    from tagcap.features.images import check_size, load_image, shrink, to_rgb

    if isinstance(image, (str, Path)):
        return load_image(image, reduce_to=reduce_to)
    if isinstance(image, (bytes, bytearray, memoryview)):  # an encoded file: decoded as a file would be
        return load_image(io.BytesIO(bytes(image)), name=where, reduce_to=reduce_to)
    if isinstance(image, Image.Image):  # in memory already: held to the same size limits as a file
        check_size(image.width, image.height, where)
        return shrink(to_rgb(image), reduce_to)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise DataError(where, f"an array of shape {image.shape} and dtype {image.dtype}; expected HxWx3 (RGB), "
                                   "HxWx4 (RGBA) or HxW (grey) uint8")
        check_size(image.shape[1], image.shape[0], where)
        return shrink(to_rgb(Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)),
                      reduce_to)
    raise DataError(where, f"a {type(image).__name__}; expected a file path, an image file's bytes, a PIL image or a "
                           f"uint8 numpy array")


class Model:
    """Loaded models behind one backbone pass: `tag`, `caption`, `describe`. Made by `tagcap.load`."""

    def __init__(self, models, batch_size: int = 16):
        self._models = models
        self.batch_size = batch_size

    @property
    def names(self) -> list[str]:
        """The loaded models' names."""
        return [m.name for m in self._models.models]

    def info(self) -> dict:
        """Per model: method, backbone, vocabulary size, training data and metrics."""
        return self._models.describe()

    def tag(self, images: Iterable, threshold: float | None = None, top_k: int | None = None,
            strict: bool = False) -> list[list[Tag]]:
        """Per image, its tags from every annotator. `threshold` and `top_k` replace each model's own
        decision rule (both: the top k at or above the threshold). An image that cannot be read gets
        no tags and a warning naming it (`strict=True`: a DataError instead; `describe` says why)."""
        self._need(self._models.annotators, "tag", "annotation")
        return [d.tags for d in self._describe(images, threshold, top_k, captions=False, strict=strict, warn=True)]

    def caption(self, images: Iterable, beam: int = 3, strict: bool = False) -> list[str | None]:
        """Per image, one sentence (beam search of width `beam`; 1 is greedy); None, with a warning
        naming it, for an image that cannot be read (`strict=True`: a DataError instead)."""
        self._need(self._models.captioner, "caption", "captioning")
        return [d.caption for d in self._describe(images, beam=beam, tags=False, strict=strict, warn=True)]

    def describe(self, images: Iterable, threshold: float | None = None, top_k: int | None = None,
                 beam: int = 3, strict: bool = False) -> list[Description]:
        """Per image, tags and caption together (the backbone runs once for both). An image that
        cannot be read gets a Description with its `error`, and the others are described as usual,
        as `tagcap predict` goes on; `strict=True` raises the first DataError instead."""
        return self._describe(images, threshold, top_k, beam, strict=strict)

    def _describe(self, images: Iterable, threshold=None, top_k=None, beam: int = 3, tags: bool = True,
                  captions: bool = True, strict: bool = False, warn: bool = False) -> list[Description]:
        if isinstance(images, (str, Path, np.ndarray, bytes)) or hasattr(images, "mode"):
            images = [images]  # one image given bare
        images = list(images)
        out: list[Description] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            names = [str(x) if isinstance(x, (str, Path)) else f"image {start + i}" for i, x in enumerate(chunk)]
            read: dict[int, object] = {}
            failed: dict[int, str] = {}
            for n, (x, name) in enumerate(zip(chunk, names)):
                try:
                    read[n] = as_rgb(x, name, self._models.decode_size)
                except DataError as e:
                    if strict:
                        raise
                    failed[n] = e.problem
                    if warn:
                        import warnings

                        warnings.warn(f"{name}: {e.problem}", stacklevel=3)
            results = dict(zip(read, self._models.run(list(read.values()), threshold=threshold, top_k=top_k,
                                                      beam_width=beam, tags=tags, captions=captions))) if read else {}
            for n, name in enumerate(names):
                if n in failed:
                    out.append(Description(name, error=failed[n]))
                    continue
                r = results[n]
                tags = [Tag(t["label"], t["score"], t["source"], t.get("concept"), t.get("sources", {}),
                            t.get("broader", [])) for t in r.get("labels", [])]
                out.append(Description(name, tags, r.get("caption") or None,
                                       caption_objects=[CaptionObject(**o) for o in r.get("caption_objects", [])],
                                       caption_withheld=r.get("caption_withheld")))
        return out

    @staticmethod
    def _need(present, verb: str, kind: str) -> None:
        if not present:
            raise TagcapError(f"cannot {verb}: no {kind} model is loaded (tagcap.load() loads the defaults)")

    def __repr__(self) -> str:
        return f"tagcap.Model({', '.join(self.names)})"
