"""Test runs that produce or consume proposal files (``core/rpn_generator.py``, ``core/test_engine.py``).

RPN-only models: the per-image proposals (original-image boxes and probabilities, as
``im_proposals`` returns them) are written, in image-id order, to ``rpn_proposals.pkl`` in
Detectron's layout, then that file is read back and scored with Detectron's proposal recall,
as ``generate_rpn_on_dataset`` -> ``evaluate_proposal_file`` does.

Precomputed-proposal models: the proposal file (``--proposals`` or ``TEST.PROPOSAL_FILES``) is
read with the restricted unpickler and every image to test must have an entry.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convert.detectron_cfg import dump_detectron_cfg
from parity.proposals import ProposalStats, evaluate_proposal_file
from rcnn.data.datasets import COCODataset
from rcnn.data.proposal_file import (
    ProposalFileError,
    boxes_by_image,
    read_proposal_file,
    write_proposal_file,
)
from rcnn.inference.detections import ImageDetections

logger = logging.getLogger(__name__)

PROPOSALS_FILE = "rpn_proposals.pkl"


def proposal_file_of(cfg, override: str | None) -> Path:
    """The proposal file a precomputed-proposal model is tested with: ``override``, else the
    config's single local ``TEST.PROPOSAL_FILES`` entry."""
    if override:
        return Path(override)
    files = cfg.TEST.PROPOSAL_FILES
    if len(files) != 1:
        raise ProposalFileError(f"the model needs one proposal file (TEST.PROPOSAL_FILES has {len(files)}): pass --proposals")
    if "://" in files[0]:
        raise ProposalFileError(f"TEST.PROPOSAL_FILES is the URL {files[0]}: download it and pass --proposals FILE")
    return Path(files[0])


def load_test_proposals(path: Path, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """``{image id: (N, 4) boxes as in the file}`` for the images to test."""
    if not path.is_file():
        raise ProposalFileError(f"proposal file {path} does not exist")
    boxes = boxes_by_image(read_proposal_file(path), image_ids, str(path))
    logger.info("read proposals of %d images from %s", len(boxes), path)
    return boxes


def save_and_evaluate_proposals(cfg, dataset: COCODataset, results: Sequence[tuple[int, ImageDetections]],
                                out_dir: Path) -> ProposalStats:
    """Write ``rpn_proposals.pkl`` and return its proposal recall on the same images."""
    path = out_dir / PROPOSALS_FILE
    write_proposal_file(path, [d.boxes for _, d in results], [d.scores for _, d in results],
                        [i for i, _ in results], dump_detectron_cfg(cfg))
    stats = evaluate_proposal_file(dataset, path, [i for i, _ in results], cfg.TEST.CLASS_SPECIFIC_AR)
    logger.info("proposal recall:\n%s", "\n".join(stats.lines()))
    return stats
