"""rcnn.data.loader: Detectron's sampling order and training blobs (fixtures/golden/roidb_*,
PROVENANCE.md), and the DataLoader's independence of workers and ranks."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from rcnn.config import load_cfg
from rcnn.data.datasets import COCODataset
from rcnn.data.loader import (
    MinibatchSchedule,
    TrainMinibatches,
    build_train_loader,
    get_image_blob,
    get_minibatch,
    shuffle_roidb_inds,
)
from rcnn.data.roidb import RoidbEntry, combined_roidb_for_training
from rcnn.data.train_batch import TrainBatch
from tests import golden
from tests.coco_mini import annotations_only_coco_mini

REPO = Path(__file__).resolve().parents[1]
MINI_JSON = {"mask": "instances_val2017.json", "keypoint": "person_keypoints_val2017.json"}
CONFIGS = ("mask", "keypoint")


def training_roidb(data: Path, which: str, folder: str = "coco-mini-val2017") -> list[RoidbEntry]:
    mini = data / folder
    return combined_roidb_for_training([COCODataset(mini / MINI_JSON[which], mini / "val2017")],
                                       keypoints_on=(which == "keypoint"))


@pytest.fixture(scope="module")
def mask_roidb(test_data: Path) -> list[RoidbEntry]:
    """The shipped 4 CC BY images (8 entries with the flipped ones)."""
    return training_roidb(test_data, "mask", "coco-cc-by")


def sizes(roidb: list[RoidbEntry]) -> tuple[list[int], list[int]]:
    return [e.width for e in roidb], [e.height for e in roidb]


@pytest.fixture(scope="module")
def mini(test_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """coco-mini's shipped annotations; its images are stand-ins (tests/coco_mini.py): the order
    depends on the sizes only."""
    return annotations_only_coco_mini(test_data, tmp_path_factory.mktemp("coco_mini"))


@pytest.mark.parametrize("which", CONFIGS)
def test_order_matches_detectron(mini: Path, which: str) -> None:
    """Seed 3: two epochs of _shuffle_roidb_inds and 2.5 epochs of _get_next_minibatch_inds."""
    roidb = training_roidb(mini, which, "")
    g = golden.npz(f"roidb_{which}")
    assert [(e.image_id, e.flipped) for e in roidb] == list(zip(g["trainmini_image_id"].tolist(),
                                                                 g["trainmini_flipped"].tolist()))
    schedule = MinibatchSchedule(*sizes(roidb), ims_per_batch=2, seed=3)
    np.testing.assert_array_equal(schedule.epoch_order(0), g["order_perm0"])
    np.testing.assert_array_equal(schedule.epoch_order(1), g["order_perm1"])
    minibatches = [schedule.minibatch(k) for k in range(len(g["order_minibatches"]))]
    np.testing.assert_array_equal(minibatches, g["order_minibatches"])
    assert schedule.minibatch(0).tolist() == g["order_minibatches"][0].tolist()  # random access goes back


@pytest.mark.parametrize("which", CONFIGS)
def test_order_without_aspect_grouping_wraps_like_detectron(mini: Path, which: str) -> None:
    """An odd number of entries: the last minibatch of an epoch takes the first index again."""
    g = golden.npz(f"roidb_{which}")
    roidb = training_roidb(mini, which, "")[: len(g["order_noaspect_perm0"])]
    schedule = MinibatchSchedule(*sizes(roidb), ims_per_batch=2, seed=3, aspect_grouping=False)
    np.testing.assert_array_equal(schedule.epoch_order(0), g["order_noaspect_perm0"])
    minibatches = [schedule.minibatch(k) for k in range(len(g["order_noaspect_minibatches"]))]
    np.testing.assert_array_equal(minibatches, g["order_noaspect_minibatches"])


def test_aspect_groups() -> None:
    widths, heights = [10, 5, 10, 5, 10, 5, 10], [5, 10, 5, 10, 5, 10, 5]
    perm = shuffle_roidb_inds(np.array(widths), np.array(heights), 2, np.random.RandomState(0))
    assert len(perm) == 6  # 4 landscape + 3 portrait -> 4 + 2
    for a, b in perm.reshape(-1, 2):
        assert (widths[a] >= heights[a]) == (widths[b] >= heights[b])
    with pytest.raises(ValueError, match="fewer than one minibatch"):
        MinibatchSchedule([10, 5], [5, 10], ims_per_batch=2)


def minibatch_blob_matches_detectron(shared_data: Path, which: str, blob: str) -> None:
    """get_minibatch after np.random.seed(seed): scale draw, blob bytes, im_info (one landscape
    pair with a flipped image, one portrait pair; 800 for the mask config, 640..800 for keypoints)."""
    g = golden.npz(f"roidb_{which}")
    roidb = training_roidb(shared_data, which)
    entries = [roidb[i] for i in g[blob + "roidb_inds"]]
    scales = tuple(g["train_scales"].tolist())
    seed = int(g[blob + "seed"])
    np.testing.assert_array_equal(np.random.RandomState(seed).randint(0, len(scales), 2), g[blob + "scale_inds"])
    batch = get_minibatch(entries, np.random.RandomState(seed), scales, int(g["train_max_size"]))
    data = batch.blob.numpy()
    assert list(data.shape) == g[blob + "shape"].tolist()
    assert hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest() == str(g[blob + "sha256"])
    assert batch.im_info.numpy().tobytes() == g[blob + "im_info"].tobytes()
    _, im_scales = get_image_blob(entries, g[blob + "scale_inds"], scales, int(g["train_max_size"]))
    assert np.array(im_scales).tobytes() == g[blob + "im_scales"].tobytes()


def test_minibatch_blobs_match_detectron(shared_data: Path) -> None:
    """The blobs of coco-mini images (not shipped): one test, as it needs ../shared."""
    for which in CONFIGS:
        for blob in ("blob0_", "blob1_"):
            minibatch_blob_matches_detectron(shared_data, which, blob)


def test_train_batch_fields(mask_roidb: list[RoidbEntry]) -> None:
    ds = TrainMinibatches(mask_roidb, (200, 300), 500, seed=5)
    for i in range(3):
        batch = ds.batch(i)
        entries = [mask_roidb[j] for j in ds.schedule.minibatch(i)]
        assert isinstance(batch, TrainBatch) and len(batch.targets) == 2
        n, c, h, w = batch.blob.shape
        assert (n, c) == (2, 3) and h % 32 == 0 and w % 32 == 0 and batch.blob.dtype == torch.float32
        assert batch.im_info.dtype == torch.float32 and batch.im_info.shape == (2, 3)
        for k, (entry, target) in enumerate(zip(entries, batch.targets)):
            sh, sw, scale = batch.im_info[k].tolist()
            assert (sh, sw) == (np.round(entry.height * scale), np.round(entry.width * scale))
            assert sh <= h and sw <= w
            assert min(sh, sw) in (200, 300) or max(sh, sw) == 500
            assert batch.blob[k, :, int(sh):, :].abs().sum() == 0 and batch.blob[k, :, :, int(sw):].abs().sum() == 0
            assert (target.image_id, target.flipped) == (entry.image_id, entry.flipped)
            assert target.boxes.numpy().tobytes() == entry.boxes.tobytes()  # original coordinates
        moved = batch.to("meta")
        assert moved.blob.device.type == moved.im_info.device.type == "meta" and moved.blob.shape == batch.blob.shape
        for t, m in zip(batch.targets, moved.targets):
            assert all(x.device.type == "meta" for x in (m.boxes, m.classes, m.is_crowd))
            assert (m.height, m.width, m.image_id, m.flipped, m.segms, m.keypoints) == \
                (t.height, t.width, t.image_id, t.flipped, t.segms, None)


def test_workers_and_ranks_give_the_global_sequence(mask_roidb: list[RoidbEntry]) -> None:
    """0 and 2 workers give the same batches; ranks 0 and 1 of 2 take the global minibatches
    alternately; ``start`` continues a rank's stream."""
    def take(dataset: TrainMinibatches, n: int, workers: int) -> list[TrainBatch]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
        it = iter(loader)
        return [next(it) for _ in range(n)]

    def same(a: TrainBatch, b: TrainBatch) -> bool:
        return (torch.equal(a.blob, b.blob) and torch.equal(a.im_info, b.im_info)
                and [(t.image_id, t.flipped) for t in a.targets] == [(t.image_id, t.flipped) for t in b.targets])

    kw = dict(scales=(160, 192, 224), max_size=400, seed=11)
    serial = take(TrainMinibatches(mask_roidb, **kw), 6, 0)
    assert all(same(a, b) for a, b in zip(serial, take(TrainMinibatches(mask_roidb, **kw), 6, 2)))
    assert len({tuple(b.im_info[:, 2].tolist()) for b in serial}) > 1  # scales do vary
    ranks = [TrainMinibatches(mask_roidb, rank=r, world_size=2, **kw) for r in (0, 1)]
    for i in range(3):
        assert same(ranks[0].batch(i), serial[2 * i]) and same(ranks[1].batch(i), serial[2 * i + 1])
    assert same(TrainMinibatches(mask_roidb, start=2, rank=1, world_size=2, **kw).batch(0), serial[5])
    with pytest.raises(ValueError, match="rank 2"):
        TrainMinibatches(mask_roidb, rank=2, world_size=2, **kw)


def test_build_train_loader_uses_the_config(mask_roidb: list[RoidbEntry]) -> None:
    cfg = load_cfg(REPO / "configs/12_2017_baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml")
    loader = build_train_loader(mask_roidb, cfg, rank=1, world_size=8, num_workers=0, start_iter=4)
    ds = loader.dataset
    assert ds.scales == (640, 672, 704, 736, 768, 800) and ds.max_size == 1333 and ds.stride == 32
    assert ds.seed == 3 and ds.global_index(0) == 33 and ds.schedule.ims_per_batch == 2
    np.testing.assert_array_equal(ds.pixel_means, [[[102.9801, 115.9465, 122.7717]]])
    no_fpn = load_cfg(None, ["TRAIN.SCALES", "(100,)", "TRAIN.MAX_SIZE", "200", "RNG_SEED", "4"])
    batch = next(iter(build_train_loader(mask_roidb, no_fpn, num_workers=0)))
    assert list(batch.blob.shape[2:]) == batch.im_info[:, :2].max(0).values.int().tolist()  # no padding
