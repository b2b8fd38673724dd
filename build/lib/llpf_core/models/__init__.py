"""The model zoo. A family's module is imported when one of its models is first built or looked up
(``registry.build_model``): torchvision, which some families use, costs seconds to import."""

# Each zoo model and the module of this package that registers it with ``@register_model``.
ZOO = {
    "cct7_3x1_32": "cct",
    "cnn": "cnn",
    "densenet121": "densenet",
    "dla": "dla",
    "efficientnet_b0": "efficientnet",
    "lenet5": "lenet",
    "mlp": "mlp",
    "mobilenet_v2": "mobilenet",
    "regnet_x_200mf": "regnet",
    "resnet18": "resnet",
    "shufflenet": "shufflenet",
    "shufflenet_v2": "shufflenet",
    "vgg11": "vgg",
}
