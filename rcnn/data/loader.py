"""Training minibatches in Detectron's order, built with Detectron's arithmetic.

Why: Detectron's 1x recipe sees images in a particular order (``roi_data/loader.py``: every
epoch a fresh permutation, aspect-grouped into pairs) at randomly drawn scales
(``roi_data/minibatch.py::_get_image_blob``); reproducing both, from explicit seeds, makes a
run repeatable and comparable with Detectron's NumPy code (docs/detectron.md §5.2).

* Order: ``shuffle_roidb_inds`` is ``_shuffle_roidb_inds`` with a ``RandomState`` in place of
  the global ``numpy.random`` (``RandomState(3)`` = Detectron's ``np.random.seed(cfg.RNG_SEED)``
  when nothing else draws in between); ``MinibatchSchedule`` cuts the successive permutations
  into minibatches like ``_get_next_minibatch_inds`` (a minibatch that runs past the end of a
  permutation wraps to its start, then the next epoch is drawn).
* Several processes: global minibatch ``k`` goes to rank ``k % world_size``, so the ranks
  together see one sequence, as Detectron's GPUs shared one queue.
* Scales: per minibatch ``randint(0, len(TRAIN.SCALES), size=#images)`` from a ``RandomState``
  seeded by ``(seed, k)``; so the blobs do not depend on the number of workers.
* Blob: ``cv2.imread``, ``im[:, ::-1, :]`` if flipped, ``prep_im_for_blob`` and
  ``im_list_to_blob`` (``rcnn.data.preprocess``); ``im_info = [round(h*s), round(w*s), s]``
  float32 from the roidb's (json) size, unpadded, as ``roi_data/rpn.py::add_rpn_blobs``.

Keypoint models: Detectron's loader re-draws a minibatch that ``get_minibatch`` reports invalid
(``finalize_keypoint_minibatch``: too few visible keypoints), but in end-to-end training the RPN
path always reports it valid and the collect op ignores that verdict, so no minibatch is ever
re-drawn; nor is one here.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rcnn.config import CfgNode
from rcnn.data.preprocess import COARSEST_STRIDE, PIXEL_MEANS, ImageReadError, images_to_blob, prepare_image, read_image
from rcnn.data.roidb import RoidbEntry
from rcnn.data.train_batch import TrainBatch

__all__ = [
    "MinibatchSchedule",
    "TrainMinibatches",
    "build_train_loader",
    "get_image_blob",
    "get_minibatch",
    "shuffle_roidb_inds",
]

logger = logging.getLogger(__name__)


def shuffle_roidb_inds(widths: np.ndarray, heights: np.ndarray, ims_per_batch: int,
                       rng: np.random.RandomState, aspect_grouping: bool = True) -> np.ndarray:
    """One epoch's roidb order (``RoIDataLoader._shuffle_roidb_inds``).

    With aspect grouping: landscape (``w >= h``) and portrait indices are permuted separately,
    each cut to a multiple of ``ims_per_batch``, grouped into minibatches, and the minibatches
    permuted, so every minibatch has one orientation.
    """
    n = len(widths)
    if not aspect_grouping:
        return rng.permutation(np.arange(n))
    horz = np.asarray(widths) >= np.asarray(heights)
    horz_inds = rng.permutation(np.where(horz)[0])
    vert_inds = rng.permutation(np.where(~horz)[0])
    horz_inds = horz_inds[: (len(horz_inds) // ims_per_batch) * ims_per_batch]
    vert_inds = vert_inds[: (len(vert_inds) // ims_per_batch) * ims_per_batch]
    inds = np.hstack((horz_inds, vert_inds)).reshape(-1, ims_per_batch)
    row_perm = rng.permutation(np.arange(inds.shape[0]))
    return inds[row_perm, :].reshape(-1)


class MinibatchSchedule:
    """The global sequence of minibatches (roidb indices) of Detectron's ``RoIDataLoader``.

    Epoch ``e`` is the ``e``-th permutation drawn from ``RandomState(seed)``; minibatch ``k``
    is number ``k % per_epoch`` of epoch ``k // per_epoch``. Random access replays the draws,
    so any process can start anywhere (e.g. when resuming).
    """

    def __init__(self, widths: Sequence[int], heights: Sequence[int], ims_per_batch: int = 2,
                 seed: int = 3, aspect_grouping: bool = True) -> None:
        self.widths = np.asarray(widths)
        self.heights = np.asarray(heights)
        self.ims_per_batch = ims_per_batch
        self.seed = seed
        self.aspect_grouping = aspect_grouping
        self._rng = np.random.RandomState(seed)
        self._epoch = -1
        self._perm = np.zeros(0, np.int64)
        length = len(self.epoch_order(0))
        if length < ims_per_batch:
            raise ValueError(f"an epoch holds {length} images, fewer than one minibatch of {ims_per_batch}"
                             + (" per orientation" if aspect_grouping else ""))
        self.minibatches_per_epoch = -(-length // ims_per_batch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The roidb permutation of ``epoch`` (0-based)."""
        if epoch < self._epoch:
            self._rng, self._epoch = np.random.RandomState(self.seed), -1
        while self._epoch < epoch:
            self._perm = shuffle_roidb_inds(self.widths, self.heights, self.ims_per_batch, self._rng,
                                            self.aspect_grouping)
            self._epoch += 1
        return self._perm

    def minibatch(self, k: int) -> np.ndarray:
        """Roidb indices of global minibatch ``k``."""
        epoch, j = divmod(k, self.minibatches_per_epoch)
        perm = self.epoch_order(epoch)
        return perm[(j * self.ims_per_batch + np.arange(self.ims_per_batch)) % len(perm)]


def get_image_blob(entries: Sequence[RoidbEntry], scale_inds: Sequence[int], scales: Sequence[int],
                   max_size: int, pixel_means: np.ndarray = PIXEL_MEANS,
                   stride: int = COARSEST_STRIDE) -> tuple[np.ndarray, list[float]]:
    """``minibatch._get_image_blob`` for given scale indices: NCHW float32 blob, im_scales."""
    ims, im_scales = [], []
    for entry, scale_ind in zip(entries, scale_inds):
        im = read_image(entry.image)
        if im.shape[:2] != (entry.height, entry.width):
            logger.warning("%s: decoded size %s differs from the annotation's %s (Detectron keeps the "
                           "annotation's for im_info and boxes)", entry.image, im.shape[:2],
                           (entry.height, entry.width))
        if entry.flipped:
            im = im[:, ::-1, :]
        im, im_scale = prepare_image(im, scales[scale_ind], max_size, pixel_means)
        ims.append(im)
        im_scales.append(im_scale)
    return images_to_blob(ims, stride), im_scales


def get_minibatch(entries: Sequence[RoidbEntry], rng: np.random.RandomState, scales: Sequence[int],
                  max_size: int, pixel_means: np.ndarray = PIXEL_MEANS, stride: int = COARSEST_STRIDE) -> TrainBatch:
    """One ``TrainBatch``: scale indices drawn like ``_get_image_blob``, then the blob and im_info."""
    scale_inds = rng.randint(0, high=len(scales), size=len(entries))
    blob, im_scales = get_image_blob(entries, scale_inds, scales, max_size, pixel_means, stride)
    im_info = np.array([[np.round(e.height * s), np.round(e.width * s), s] for e, s in zip(entries, im_scales)],
                       dtype=np.float32)
    return TrainBatch(torch.from_numpy(blob), torch.from_numpy(im_info), [e.to_targets() for e in entries])


class TrainMinibatches(IterableDataset):
    """Endless ``TrainBatch`` stream of one rank: global minibatches ``rank``, ``rank + world_size``,
    ... (starting at this rank's ``start``-th), split among DataLoader workers in turn, so the
    DataLoader yields them in order whatever ``num_workers`` is."""

    def __init__(self, roidb: Sequence[RoidbEntry], scales: Sequence[int], max_size: int, *,
                 ims_per_batch: int = 2, seed: int = 3, rank: int = 0, world_size: int = 1,
                 aspect_grouping: bool = True, pixel_means: np.ndarray = PIXEL_MEANS, stride: int = COARSEST_STRIDE,
                 start: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.roidb = list(roidb)
        self.scales = tuple(int(s) for s in scales)
        self.max_size = max_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pixel_means = np.asarray(pixel_means, dtype=np.float64)
        self.stride = stride
        self.start = start
        self._unreadable: set[int] = set()
        self.schedule = MinibatchSchedule([e.width for e in self.roidb], [e.height for e in self.roidb],
                                          ims_per_batch, seed, aspect_grouping)

    def global_index(self, i: int) -> int:
        """Global minibatch number of this rank's ``i``-th minibatch (counting from ``start``)."""
        return (self.start + i) * self.world_size + self.rank

    def batch(self, i: int) -> TrainBatch:
        """This rank's ``i``-th minibatch."""
        k = self.global_index(i)
        inds = [int(j) for j in self.schedule.minibatch(k)]
        while True:
            rng = np.random.RandomState(np.random.SeedSequence([self.seed, k]).generate_state(4))
            entries = [self.roidb[j] for j in inds]
            try:
                return get_minibatch(entries, rng, self.scales, self.max_size, self.pixel_means, self.stride)
            except ImageReadError as e:
                # Passed the roidb's signature check but does not decode (e.g. a corrupt JPEG):
                # Detectron would stop here; the run goes on with the next readable entry.
                inds = self._replace_unreadable(inds)
                logger.warning("minibatch %d: %s; using the next roidb entry instead (%d unreadable so far)",
                               k, e, len(self._unreadable))

    def _replace_unreadable(self, inds: list[int]) -> list[int]:
        """Each index whose image does not decode replaced by the next decodable entry."""
        out = []
        for j in inds:
            while j in self._unreadable or cv2.imread(str(self.roidb[j].image)) is None:
                self._unreadable.add(j)
                if len(self._unreadable) == len(self.roidb):
                    raise ImageReadError("no image of the training set can be decoded")
                j = (j + 1) % len(self.roidb)
            out.append(j)
        return out

    def __iter__(self) -> Iterator[TrainBatch]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for i in itertools.count(worker, num_workers):
            yield self.batch(i)


def build_train_loader(roidb: Sequence[RoidbEntry], cfg: CfgNode, *, rank: int = 0, world_size: int = 1,
                       num_workers: int | None = None, seed: int | None = None,
                       start_iter: int = 0) -> DataLoader:
    """DataLoader of ``TrainBatch`` for one rank from the config's ``TRAIN.SCALES``, ``MAX_SIZE``,
    ``IMS_PER_BATCH``, ``ASPECT_GROUPING``, ``PIXEL_MEANS``, padding (``FPN.COARSEST_STRIDE``
    with FPN, none without) and ``RNG_SEED`` (``seed`` overrides it); ``num_workers`` defaults
    to ``DATA_LOADER.NUM_THREADS``; ``start_iter`` skips this rank's first minibatches."""
    dataset = TrainMinibatches(
        roidb, cfg.TRAIN.SCALES, cfg.TRAIN.MAX_SIZE, ims_per_batch=cfg.TRAIN.IMS_PER_BATCH,
        seed=cfg.RNG_SEED if seed is None else seed, rank=rank, world_size=world_size,
        aspect_grouping=cfg.TRAIN.ASPECT_GROUPING, pixel_means=np.array(cfg.PIXEL_MEANS, dtype=np.float64),
        stride=cfg.FPN.COARSEST_STRIDE if cfg.FPN.FPN_ON else 1, start=start_iter,
    )
    workers = cfg.DATA_LOADER.NUM_THREADS if num_workers is None else num_workers
    logger.info("Training loader: %d roidb entries, %d minibatches per epoch, rank %d/%d, %d workers",
                len(dataset.roidb), dataset.schedule.minibatches_per_epoch, rank, world_size, workers)
    return DataLoader(dataset, batch_size=None, num_workers=workers)
