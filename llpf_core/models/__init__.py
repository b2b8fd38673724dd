"""Model families. Importing a family module runs its ``@register_model`` decorators."""
from . import cct, cnn, densenet, dla, efficientnet, lenet, mlp, mobilenet, regnet, resnet, shufflenet, vgg  # noqa: F401
