"""Body initialisation from a torchvision ResNet-50 state dict: BN folded into AffineChannel."""
import pytest
import torch
import torchvision

from rcnn.config import load_cfg
from rcnn.engine.torchvision_body import fold_batch_norm, load_torchvision_backbone
from rcnn.engine.weights import WeightsError
from rcnn.modeling import build_model
from tests.models import CONFIGS


@pytest.fixture(scope="module")
def tv_resnet(tmp_path_factory):
    """A randomly initialised torchvision resnet50 with random BN statistics, saved to disk."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.0)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 4.0)
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_folded_affine_equals_batch_norm_eval(tv_resnet):
    net, _ = tv_resnet
    bn = net.layer2[0].bn2
    x = torch.randn(2, bn.num_features, 5, 7)
    s, b = fold_batch_norm(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    torch.testing.assert_close(x * s.view(1, -1, 1, 1) + b.view(1, -1, 1, 1), bn(x), rtol=1e-5, atol=1e-6)


def test_body_equals_torchvision_forward(tv_resnet):
    net, path = tv_resnet
    cfg = load_cfg(CONFIGS["faster"], ["RESNETS.STRIDE_1X1", "False"])
    model = build_model(cfg)
    assert load_torchvision_backbone(model, cfg, path) == 159
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = model.backbone(x.clone())
        y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for stage, layer in zip(ours, (net.layer1, net.layer2, net.layer3, net.layer4)):
            y = layer(y)
            torch.testing.assert_close(stage, y, rtol=1e-4, atol=1e-4)
    assert torch.equal(model.backbone.res3[0].branch2b.weight, net.layer2[0].conv2.weight)


def test_stride_1x1_and_foreign_files_are_refused(tv_resnet, tmp_path):
    _, path = tv_resnet
    cfg = load_cfg(CONFIGS["faster"])
    with pytest.raises(WeightsError, match="STRIDE_1X1 False"):
        load_torchvision_backbone(build_model(cfg), cfg, path)
    cfg = load_cfg(CONFIGS["faster"], ["RESNETS.STRIDE_1X1", "False"])
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(WeightsError, match="not a torchvision ResNet"):
        load_torchvision_backbone(build_model(cfg), cfg, other)
    state = torch.load(path, weights_only=True)
    del state["layer3.2.bn1.running_var"]
    torch.save(state, other)
    with pytest.raises(WeightsError, match="layer3.2.bn1 lacks running_var"):
        load_torchvision_backbone(build_model(cfg), cfg, other)
