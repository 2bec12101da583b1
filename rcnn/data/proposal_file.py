"""Detectron's proposal files (``rpn_proposals.pkl``) and how its roidb reads them.

The file (``core/rpn_generator.py``, written by ``utils/io.py::save_object`` with pickle
protocol 2) is a dict ``{'boxes': [per image (N, 4) float32, original-image pixels, in
descending score], 'scores': [per image (N,) float32], 'ids': [COCO image id], 'cfg': YAML}``;
old files name the ids ``'indexes'``. A downloaded proposal file is untrusted input exactly
like a downloaded weights file, so it is read with the same restricted unpickler
(``convert.pickle_io.load_pickle``: no code runs, object arrays refused) and then checked
entry by entry; every problem is a one-line ``ProposalFileError``.

``image_proposals`` is ``datasets/json_dataset.py::_add_proposals_from_file`` for one image:
clip to ``[0, W-1] x [0, H-1]`` (``clip_boxes_to_image``), drop boxes whose rounded
coordinates repeat an earlier box's (``unique_boxes``), keep boxes wider and taller than
``min_size`` with ``+1`` widths (``filter_small_boxes``), keep the first ``limit``, store as
float32 -- in the file's dtype until that last cast, as Detectron's NumPy does.
"""
from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from convert.pickle_io import load_pickle, write_proposals_pkl
from detectron_parity.errors import UserError

logger = logging.getLogger(__name__)


class ProposalFileError(UserError):
    """A proposal file that is missing, is no Detectron proposals dict, or lacks images."""

# utils/boxes.py::unique_boxes hashes rounded coordinates with these weights.
_UNIQUE_WEIGHTS = np.array([1, 1e3, 1e6, 1e9])


@dataclass
class ProposalFile:
    """The content of a proposal file, one list entry per image."""

    boxes: list[np.ndarray]      # (N, 4) float arrays, original-image pixels
    scores: list[np.ndarray]     # (N,) float arrays
    ids: list[int]
    cfg_yaml: str | None = None

    def by_image_id(self, source: str) -> dict[int, int]:
        """``{image id: list index}``; a repeated id is an error (Detectron would misalign)."""
        index: dict[int, int] = {}
        for i, image_id in enumerate(self.ids):
            if image_id in index:
                raise ProposalFileError(f"{source}: image id {image_id} has two proposal entries ({index[image_id]} and {i})")
            index[image_id] = i
        return index


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin1")
    return value if isinstance(value, str) else None


def _boxes(value: object, i: int, source: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        what = f"array of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ProposalFileError(f"{source}: boxes[{i}] is a {what}, not a float (N, 4) array")
    if value.ndim != 2 or value.shape[1] != 4:
        raise ProposalFileError(f"{source}: boxes[{i}] has shape {value.shape}, not (N, 4)")
    if not np.isfinite(value).all():
        raise ProposalFileError(f"{source}: boxes[{i}] holds a NaN or infinite coordinate")
    return value


def _scores(value: object, num: int, i: int, source: str) -> np.ndarray:
    # Detectron squeezes the (N, 1) probabilities: one proposal gives a 0-d array.
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf" or value.size != num or value.ndim > 2:
        what = f"{value.dtype} array of shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ProposalFileError(f"{source}: scores[{i}] is a {what}, not {num} scores for boxes[{i}]")
    return value.reshape(num)


def read_proposal_file(path: str | os.PathLike[str]) -> ProposalFile:
    """Load and check a Detectron proposal file without running any code from it."""
    source = os.fspath(path)
    top = load_pickle(path)
    if not isinstance(top, Mapping):
        raise ProposalFileError(f"{source} holds a pickled {type(top).__name__}, not a Detectron proposals dict")
    top = {_text(k): v for k, v in top.items()}
    id_field = "indexes" if "indexes" in top else "ids"   # json_dataset's compatibility rule
    missing = [k for k in ("boxes", "scores", id_field) if k not in top]
    if missing:
        raise ProposalFileError(f"{source}: not a Detectron proposals file (no {', '.join(repr(k) for k in missing)} "
                           f"key; it has {sorted(str(k) for k in top)})")
    lists = {k: top[k] for k in ("boxes", "scores", id_field)}
    for key, value in lists.items():
        if not isinstance(value, (list, tuple)):
            raise ProposalFileError(f"{source}: {key!r} is a {type(value).__name__}, not a list with one entry per image")
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1:
        raise ProposalFileError(f"{source}: 'boxes', 'scores' and {id_field!r} differ in length ({lengths})")
    ids = []
    for i, image_id in enumerate(lists[id_field]):
        if isinstance(image_id, bool) or not isinstance(image_id, numbers.Integral):
            raise ProposalFileError(f"{source}: {id_field}[{i}] is a {type(image_id).__name__}, not an image id")
        ids.append(int(image_id))
    boxes = [_boxes(b, i, source) for i, b in enumerate(lists["boxes"])]
    scores = [_scores(s, len(b), i, source) for i, (s, b) in enumerate(zip(lists["scores"], boxes))]
    cfg = top.get("cfg")
    return ProposalFile(boxes, scores, ids, _text(cfg) if cfg is not None else None)


def write_proposal_file(path: str | os.PathLike[str], boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                        ids: Sequence[int], cfg_yaml: str) -> None:
    """Write ``rpn_proposals.pkl`` as Detectron's ``generate_rpn_on_range`` does (protocol 2,
    loadable by Python 2 Detectron), atomically."""
    write_proposals_pkl(path, [np.ascontiguousarray(b, np.float32).reshape(-1, 4) for b in boxes],
                        [np.ascontiguousarray(s, np.float32).reshape(-1) for s in scores],
                        [int(i) for i in ids], cfg_yaml)


def unique_boxes(boxes: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the first box of each group with equal rounded coordinates
    under Detectron's hash ``x1 + 1e3 y1 + 1e6 x2 + 1e9 y2`` (collisions included)."""
    keys = np.round(boxes).dot(_UNIQUE_WEIGHTS)
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def filter_small_boxes(boxes: np.ndarray, min_size: float) -> np.ndarray:
    """Indices of boxes with ``x2 - x1 + 1 > min_size`` and ``y2 - y1 + 1 > min_size``."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return np.flatnonzero((w > min_size) & (h > min_size))


def image_proposals(boxes: np.ndarray, height: int, width: int, min_size: float = 2, limit: int = -1) -> np.ndarray:
    """The (R, 4) float32 proposals Detectron's roidb keeps for one image (see module doc)."""
    b = boxes.copy()
    b[:, 0::2] = np.minimum(width - 1.0, np.maximum(0.0, b[:, 0::2]))
    b[:, 1::2] = np.minimum(height - 1.0, np.maximum(0.0, b[:, 1::2]))
    b = b[unique_boxes(b)]
    b = b[filter_small_boxes(b, min_size)]
    if limit > 0:
        b = b[:limit]
    return b.astype(np.float32)


def boxes_by_image(proposals: ProposalFile, image_ids: Sequence[int], source: str) -> dict[int, np.ndarray]:
    """The file's boxes of each image in ``image_ids``; every one must have an entry (Detectron
    asserts it), entries of other images are ignored (``_remove_proposals_not_in_roidb``)."""
    index = proposals.by_image_id(source)
    absent = [image_id for image_id in image_ids if image_id not in index]
    if absent:
        raise ProposalFileError(f"{source} has no proposals for {len(absent)} of the {len(image_ids)} images "
                           f"(first image id: {absent[0]}): a proposal file of another dataset?")
    return {image_id: proposals.boxes[index[image_id]] for image_id in image_ids}


def proposals_for_images(proposals: ProposalFile, images: Sequence[tuple[int, int, int]], source: str,
                         min_size: float = 2, limit: int = -1) -> dict[int, np.ndarray]:
    """``{image id: image_proposals(...)}`` for ``(id, height, width)`` triples (``boxes_by_image``)."""
    boxes = boxes_by_image(proposals, [image_id for image_id, _, _ in images], source)
    return {image_id: image_proposals(boxes[image_id], h, w, min_size, limit) for image_id, h, w in images}
