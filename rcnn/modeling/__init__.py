"""Network modules. ``build_model(cfg)`` is the entry point."""
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN, UnsupportedModelError


def build_model(cfg) -> GeneralizedRCNN:
    """The network a (frozen) Detectron config describes, in eval mode."""
    return GeneralizedRCNN(cfg).eval()


__all__ = ["GeneralizedRCNN", "UnsupportedModelError", "build_model"]
