"""Model families. Importing a family module runs its ``@register_model`` decorators."""
from . import cnn, lenet, mlp  # noqa: F401
