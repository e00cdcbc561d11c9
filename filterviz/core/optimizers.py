"""How the parameters climb the objective (config group `optimizer`): Keras optimizers.

adam     keras.optimizers.Adam itself (conf/optimizer/adam.yaml), learning rate `step_size`
l2_step  the seeds': params += step_size * gradient / ||gradient||, per image

The ascent hands an optimizer the negated gradient, so Keras' descent climbs. A config
names the optimizer class with `_partial_: true`; the ascent adds `learning_rate=step_size`
and builds one per batch shape. Every update is elementwise or per image, so an image
never depends on its batch companions.
"""

import keras
import tensorflow as tf


class L2Step(keras.optimizers.Optimizer):
    """The seed notebooks' step: the gradient, l2-normalised over each image, times the rate."""

    def __init__(self, learning_rate: float = 10.0, name: str = "l2_step", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        axes = list(range(1, len(variable.shape)))
        variable.assign_sub(tf.cast(learning_rate, variable.dtype) * tf.math.l2_normalize(gradient, axis=axes))
