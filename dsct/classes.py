"""The ImageNet classes of the 512 generator (SPEC §6): their names, and the class closest to a text.

The names are the CLIP authors' readable ImageNet names that open_clip ships (index = the class id
the generator was trained with); ``"auto"`` picks the class whose name CLIP finds closest to the
target text, one text-to-text comparison per request.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from torch import Tensor

__all__ = ["CLASS_NAMES", "NAME_TEMPLATE", "class_name", "nearest_class"]

CLASS_NAMES: tuple[str, ...] = tuple(IMAGENET_CLASSNAMES)
NAME_TEMPLATE = "a photo of a {}."  # one template: 1000 names × the CLIP models stays one pass each


def class_name(class_id: int) -> str:
    """'292 tiger': the id with its name, as results report a held class."""
    return f"{class_id} {CLASS_NAMES[class_id]}"


def nearest_class(text: Sequence[Tensor], names: Sequence[Tensor]) -> int:
    """The class whose name embedding is closest to the text's: per CLIP model m the cosines of
    ``text[m]`` (D_m,) with each row of ``names[m]`` (C, D_m), averaged over the models, argmax."""
    if not text or len(text) != len(names):
        raise ValueError("nearest_class needs one text embedding and one name table per CLIP model")
    scores = torch.stack([F.normalize(n.float(), dim=-1) @ F.normalize(t.float(), dim=-1).to(n.device)
                          for t, n in zip(text, names)])
    return int(scores.mean(0).argmax())
