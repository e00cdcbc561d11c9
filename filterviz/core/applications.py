"""Every network of keras.applications, by name: its Keras class and the module of its own
preprocessing. A table, not a scan of keras.applications, so that the command can list the
names before TensorFlow is imported; a test checks it against Keras."""

from typing import Callable, Dict, Tuple

# name (the class name in lower case) -> (class in keras.applications, its module there)
APPLICATIONS: Dict[str, Tuple[str, str]] = {
    name.lower(): (name, module) for module, names in {
        "convnext": ["ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge"],
        "densenet": ["DenseNet121", "DenseNet169", "DenseNet201"],
        "efficientnet": [f"EfficientNetB{i}" for i in range(8)],
        "efficientnet_v2": ["EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3",
                            "EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L"],
        "inception_resnet_v2": ["InceptionResNetV2"],
        "inception_v3": ["InceptionV3"],
        "mobilenet": ["MobileNet"],
        "mobilenet_v2": ["MobileNetV2"],
        "mobilenet_v3": ["MobileNetV3Small", "MobileNetV3Large"],
        "nasnet": ["NASNetMobile", "NASNetLarge"],
        "resnet": ["ResNet50", "ResNet101", "ResNet152"],
        "resnet_v2": ["ResNet50V2", "ResNet101V2", "ResNet152V2"],
        "vgg16": ["VGG16"],
        "vgg19": ["VGG19"],
        "xception": ["Xception"],
    }.items() for name in names
}


def builder(name: str) -> Callable:
    import keras

    return getattr(keras.applications, APPLICATIONS[name][0])


def preprocess_input(name: str) -> Callable:
    """The application's own preprocessing of 0..255 RGB (some are the identity: they rescale inside)."""
    import keras

    return getattr(keras.applications, APPLICATIONS[name][1]).preprocess_input
