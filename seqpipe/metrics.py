"""The true epoch loss: `masked_metric`, a Keras metric for `weighted_metrics`.

The loss Keras shows for an epoch is a mean of batch losses, weighted by batch size on JAX,
PyTorch, tf_keras and TensorFlow run eagerly, unweighted on TensorFlow in graph mode, and
the total `loss` batch-size weighted everywhere (README, "The epoch figure"). None of these
is the mean over the epoch's present labels when batches hold different numbers of them.
This metric is: it sums the loss at present labels (weight > 0) and counts them, over the
whole epoch, in any weight mode and on any backend.

Keras is imported when the metric is made, not with seqpipe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Union

_CLASS: Any = None


def masked_metric(loss: Union[str, Callable, Any], name: Optional[str] = None):
    """A Keras metric reporting sum(loss at present labels) / (present labels) over the epoch.

    Put it in `weighted_metrics` (plain `metrics` get no sample weights): seqpipe's weights
    are > 0 exactly at present labels of real timesteps, whatever the weight mode, so the
    metric reads them as a mask and ignores their scale.

    Args:
      loss: the per-element loss: a Keras loss name ("mse", "binary_crossentropy",
        "sparse_categorical_crossentropy", ...), a `keras.losses.Loss` instance (its
        unreduced `call` is used, so its own reduction does not matter), or a function
        `(y_true, y_pred) -> losses` shaped like the weights.
      name: the metric's name; by default "masked_" and the loss's name, so the logs show
        `<output>_masked_mse`.

    Returns:
      A `keras.metrics.Metric`.

    Example::

      model.compile(loss="mse", weighted_metrics=[seqpipe.masked_metric("mse")])
      # or per output: weighted_metrics={"y": [seqpipe.masked_metric("mse")]}
    """
    return _metric_class()(loss, name=name)


def _metric_class():
    """The metric's class, made on first use so that importing seqpipe imports no Keras."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="seqpipe")
    class MaskedMean(keras.metrics.Metric):
        """sum(loss where sample_weight > 0) / count(sample_weight > 0), over the epoch."""

        def __init__(self, loss, name=None, **kwargs):
            self.loss, self._per_element = loss, _per_element(keras, loss)
            super().__init__(name=name or f"masked_{_loss_name(loss)}", **kwargs)
            # float32 sums over an epoch (JAX has no float64 by default), compensated
            # (Kahan): millions of labels, added a batch at a time, stay exact to float32.
            self.total, self.total_error = (
                self.add_variable(shape=(), initializer="zeros", name=n)
                for n in ("total", "total_error"))
            self.count, self.count_error = (
                self.add_variable(shape=(), initializer="zeros", name=n)
                for n in ("count", "count_error"))

        def update_state(self, y_true, y_pred, sample_weight=None):
            values = ops.cast(self._per_element(y_true, y_pred), "float32")
            if sample_weight is None:
                present = ops.ones_like(values, dtype="bool")
            else:  # seqpipe's weights are shaped like the per-element losses
                present = ops.cast(sample_weight, "float32") > 0
            # where, not a product: a label with weight 0 may hold anything.
            _add(self.total, self.total_error, ops.sum(ops.where(present, values, 0.0)))
            _add(self.count, self.count_error, ops.sum(ops.cast(present, "float32")))

        def result(self):
            return ops.divide_no_nan(self.total, self.count)

        def reset_state(self):
            for variable in (self.total, self.total_error, self.count, self.count_error):
                variable.assign(0.0)

        def get_config(self):
            return {"name": self.name,
                    "loss": self.loss if isinstance(self.loss, str)
                    else keras.saving.serialize_keras_object(self.loss)}

        @classmethod
        def from_config(cls, config):
            loss = config["loss"]
            if not isinstance(loss, str):
                loss = keras.saving.deserialize_keras_object(loss)
            return cls(loss, name=config["name"])

    _CLASS = MaskedMean
    return MaskedMean


def _add(total, error, value) -> None:
    """total += value, carrying the rounding error of each addition into the next (Kahan)."""
    corrected = value - error
    new_total = total + corrected
    error.assign((new_total - total) - corrected)
    total.assign(new_total)


def _per_element(keras, loss) -> Callable:
    """The unreduced loss function of what `masked_metric` was given."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return loss.call  # the per-element values, before the instance's reduction
    if callable(loss):
        return loss
    raise TypeError(f"masked_metric: loss must be a Keras loss name, a keras.losses.Loss or "
                    f"a function (y_true, y_pred) -> losses; got {loss!r}")


def _loss_name(loss) -> str:
    if isinstance(loss, str):
        return loss
    return str(getattr(loss, "name", None) or getattr(loss, "__name__", "loss"))
