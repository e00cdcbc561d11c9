"""The model as the XLA-compiled ascent step runs it.

XLA compiles a max pool's gradient to SelectAndScatter, which TensorFlow refuses under op
determinism (it is not deterministic on a GPU) and which is slow on a CPU (~15 % of a VGG16
step). A max pool whose windows tile the input (VGG's 2x2, stride 2) is also a reshape and a
max, whose gradient is plain arithmetic: deterministic and fused. The pictures differ from the
plain graph's only where a window holds equal maxima (the plain gradient picks the first, this
one splits it).
"""

import keras
import tensorflow as tf


class TiledMaxPool(keras.layers.Layer):
    """MaxPooling2D with pool_size == strides and padding="valid", as a reshape and a max."""

    def __init__(self, pool: keras.layers.MaxPooling2D):
        super().__init__(name=pool.name, dtype=pool.dtype_policy)
        self.ph, self.pw = pool.pool_size

    def call(self, x):
        shape = tf.shape(x)
        h, w = shape[1] // self.ph, shape[2] // self.pw
        x = x[:, : h * self.ph, : w * self.pw]  # "valid": a partial window at the edge is dropped
        return tf.reduce_max(tf.reshape(x, [shape[0], h, self.ph, w, self.pw, shape[3]]), axis=[2, 4])


def _tiles(layer: keras.layers.Layer) -> bool:
    return (isinstance(layer, keras.layers.MaxPooling2D) and layer.padding == "valid"
            and tuple(layer.pool_size) == tuple(layer.strides) and layer.data_format == "channels_last")


def for_xla(extractor: keras.Model) -> keras.Model:
    """`extractor` with its tiling max pools as TiledMaxPool; every other layer is the same object
    (weights shared, nothing copied). A model without such pools is returned as it is."""
    if not any(_tiles(layer) for layer in extractor.layers):
        return extractor
    return keras.models.clone_model(extractor, clone_function=lambda l: TiledMaxPool(l) if _tiles(l) else l)
