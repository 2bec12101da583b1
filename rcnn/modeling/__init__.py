"""Network modules. ``build_model(cfg)`` is the entry point."""
from rcnn.modeling.c4 import ResNetC4RCNN, is_c4
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN, UnsupportedModelError
from rcnn.modeling.retinanet import RetinaNet


def build_model(cfg) -> GeneralizedRCNN:
    """The network a (frozen) Detectron config describes, in eval mode."""
    if is_c4(cfg):
        return ResNetC4RCNN(cfg).eval()   # same stages as GeneralizedRCNN (rcnn.modeling.c4)
    if cfg.RETINANET.RETINANET_ON:
        return RetinaNet(cfg).eval()
    return GeneralizedRCNN(cfg).eval()


__all__ = ["GeneralizedRCNN", "RetinaNet", "UnsupportedModelError", "build_model"]
