"""Safe conversion between Detectron ``.pkl`` weights and this project's ``.pt`` checkpoints.

Modules: ``pickle_io`` (restricted unpickler, Python-2-compatible writer), ``detectron_cfg``
(the tagged cfg YAML inside Detectron files), ``kinds`` (what a file is, which config family
it needs), ``checkpoint`` (strict loading into models, our checkpoint format, conversions),
``__main__`` (the ``detectron-convert`` command). Importing this package stays light; import
the module you need.
"""
from convert.errors import CfgMismatchError, ConvertError, UnsafePickleError, WeightsMismatchError

__all__ = ["CfgMismatchError", "ConvertError", "UnsafePickleError", "WeightsMismatchError"]
