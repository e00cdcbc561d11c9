"""How the parameters move up the objective's gradient (config group `optimizer`).

l2_step  the seeds': params += step_size * gradient / ||gradient||, per image
adam     Adam with learning rate step_size (Olah et al. and lucid use 0.05)

Both are elementwise or per image, so an image never depends on its batch companions.
Written out here (a few lines each) so the state is plain tensors inside the compiled step.
"""

from dataclasses import dataclass
from typing import Tuple

import tensorflow as tf

State = Tuple[tf.Tensor, ...]


@dataclass
class L2Step:
    def init_state(self, params: tf.Tensor) -> State:
        return ()

    def update(self, params, grads, state: State, step_size, t) -> Tuple[tf.Tensor, State]:
        axes = list(range(1, len(params.shape)))
        return params + step_size * tf.math.l2_normalize(grads, axis=axes), state


@dataclass
class Adam:
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8

    def init_state(self, params: tf.Tensor) -> State:
        return tf.zeros_like(params), tf.zeros_like(params)

    def update(self, params, grads, state: State, step_size, t) -> Tuple[tf.Tensor, State]:
        m, v = state
        m = self.beta1 * m + (1.0 - self.beta1) * grads
        v = self.beta2 * v + (1.0 - self.beta2) * tf.square(grads)
        t = tf.cast(t, tf.float32) + 1.0
        m_hat = m / (1.0 - tf.pow(self.beta1, t))
        v_hat = v / (1.0 - tf.pow(self.beta2, t))
        return params + step_size * m_hat / (tf.sqrt(v_hat) + self.epsilon), (m, v)  # ascent


def make_optimizer(name: str, **options):
    kinds = {"l2_step": L2Step, "adam": Adam}
    return kinds[name](**options)
