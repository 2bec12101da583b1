"""The one rule between PyTorch state-dict keys and Detectron blob names.

Every module that owns parameters is registered in the model tree so that its
path spells the Detectron op that created the blob::

    <component>.<op path>.<tensor>   <->   <op name>_<suffix>

* ``component`` is the model's top-level child (``backbone``, ``fpn``, ``rpn``,
  ``box_head``, ``mask_head``, ``keypoint_head``; ``retinanet`` for RetinaNet's
  towers) and is not part of the blob name;
* the remaining module path, joined with ``_``, is the Detectron op name
  (``res2.0.branch2a`` -> ``res2_0_branch2a``, ``_[mask]_fcn1`` -> ``_[mask]_fcn1``);
* the tensor name maps to Caffe2's suffix: ``weight`` -> ``_w``, ``bias`` -> ``_b``,
  ``scale`` -> ``_s`` (AffineChannel).

Examples: ``backbone.res4.3.branch2b_bn.scale`` <-> ``res4_3_branch2b_bn_s``;
``rpn.conv_rpn_fpn2.weight`` <-> ``conv_rpn_fpn2_w``;
``retinanet.retnet_cls_pred_fpn3.bias`` <-> ``retnet_cls_pred_fpn3_b``.

The forward direction needs nothing but the key. The inverse needs to know the
component, so it is the same rule applied to a model's keys and inverted
(``blob_to_key``); ``tests/test_naming.py`` proves the mapping is a bijection onto
Detectron's parameter blob lists for the three R-50-FPN models.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

TENSOR_SUFFIX: Mapping[str, str] = {"weight": "w", "bias": "b", "scale": "s"}
COMPONENTS = ("backbone", "fpn", "rpn", "box_head", "mask_head", "keypoint_head", "retinanet")


def key_to_blob(key: str) -> str:
    """Detectron blob name of a state-dict key (see the module docstring)."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] not in COMPONENTS or parts[-1] not in TENSOR_SUFFIX:
        raise ValueError(f"state-dict key {key!r} does not follow <component>.<op path>.<tensor>")
    return "_".join(parts[1:-1]) + "_" + TENSOR_SUFFIX[parts[-1]]


def blob_to_key(keys: Iterable[str]) -> dict[str, str]:
    """Map each blob name to its state-dict key, for the keys of one model.

    Raises ``ValueError`` if two keys would give the same blob name (the rule is
    then not invertible for that model, which is a modelling bug).
    """
    out: dict[str, str] = {}
    for key in keys:
        blob = key_to_blob(key)
        if blob in out:
            raise ValueError(f"keys {out[blob]!r} and {key!r} both map to blob {blob!r}")
        out[blob] = key
    return out
