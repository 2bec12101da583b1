"""detectron_parity.cli: the common flags and the one wrapper that turns errors into exit statuses."""
from __future__ import annotations

import argparse
import errno

import pytest

from detectron_parity import cli
from detectron_parity.errors import UserError
from rcnn.commands import catalog_name, check_num_classes
from rcnn.data.datasets import DatasetError
from rcnn.engine.train_engine import TrainingError


def _raise(e: BaseException):
    def body() -> int:
        raise e
    return body


@pytest.mark.parametrize("error,status,line", [
    (DatasetError("no images in x\n(second line)"), 2, "error: no images in x (second line)"),
    (TrainingError("loss is NaN at iteration 3"), 1, "error: loss is NaN at iteration 3"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "out/a.json"), 2,
     "error: out/a.json: No such file or directory"),
    (OSError("cannot encode the drawing of a.jpg"), 2, "error: cannot encode the drawing of a.jpg"),
])
def test_errors_end_in_one_line_and_their_status(error, status, line, capsys):
    assert cli.run(_raise(error)) == status
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", line + "\n")


def test_interrupt_and_success(capsys):
    assert cli.run(_raise(KeyboardInterrupt()), interrupted="interrupted: rerun with --resume") == 130
    assert capsys.readouterr().err == "interrupted: rerun with --resume\n"
    assert cli.run(lambda: 0) == 0
    with pytest.raises(ZeroDivisionError):   # a bug is no user error: its traceback is kept
        cli.run(lambda: 1 // 0)


def test_every_error_class_is_a_user_error():
    from convert.errors import ConvertError
    from detectron_parity.fileio import InputError
    from parity.download import DownloadError
    from rcnn.config import ConfigError, ConfigKeyError
    from rcnn.data.preprocess import ImageReadError
    from rcnn.data.proposal_file import ProposalFileError
    from rcnn.engine.devices import DeviceError
    from rcnn.engine.weights import WeightsError
    from rcnn.inference.test_time_aug import AugmentationError
    from rcnn.modeling import UnsupportedModelError

    for cls in (ConvertError, InputError, DownloadError, ConfigError, ConfigKeyError, ImageReadError,
                ProposalFileError, DeviceError, WeightsError, AugmentationError, UnsupportedModelError,
                DatasetError, TrainingError):
        assert issubclass(cls, UserError), cls


def test_common_flags():
    p = argparse.ArgumentParser()
    cli.add_cfg_args(p)
    cli.add_weights_args(p, required=True)
    cli.add_coco_args(p, "a name")
    cli.add_output_dir_arg(p, default="out")
    cli.add_device_arg(p)
    args = p.parse_args(["--cfg", "c.yaml", "--load_ckpt", "m.pt", "--set", "TEST.SCALE", "400", "--dataset", "d"])
    assert (args.cfg, args.load_ckpt, args.load_detectron, args.opts, args.dataset, args.output_dir, args.device) == \
        ("c.yaml", "m.pt", None, ["TEST.SCALE", "400"], "d", "out", None)
    with pytest.raises(SystemExit):
        p.parse_args(["--cfg", "c.yaml", "--load_ckpt", "m.pt", "--load_detectron", "m.pkl"])


def test_dataset_names_and_class_count():
    assert catalog_name("coco2017", "val") == "coco_2017_val"
    assert catalog_name("keypoints_coco2017", "train") == "keypoints_coco_2017_train"
    assert catalog_name("coco_2014_minival", "val") == "coco_2014_minival"
    check_num_classes("d", 81, 81)
    with pytest.raises(DatasetError, match="dataset d has 2 classes .* MODEL.NUM_CLASSES 81"):
        check_num_classes("d", 2, 81)
