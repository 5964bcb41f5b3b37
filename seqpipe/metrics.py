"""True epoch figures: `masked_metric`, a Keras metric for `weighted_metrics`.

The loss Keras shows for an epoch is a mean of batch losses, weighted by batch size on JAX,
PyTorch, tf_keras and TensorFlow run eagerly, unweighted on TensorFlow in graph mode, and
the total `loss` batch-size weighted everywhere (README, "The epoch figure"). A weighted
metric such as accuracy is sum(value * weight) / sum(weight) over the epoch, so seqpipe's
rescaled weights make the labels of a batch with fewer of them count more. None of these is
the mean over the epoch's present labels when batches hold different numbers of them. This
metric is: it sums a per-element loss or metric at present labels (weight > 0) and counts
them, over the whole epoch, in any weight mode and on any backend.

Keras is imported when the metric is made, not with seqpipe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Union

_CLASS: Any = None


def masked_metric(loss: Union[str, Callable, Any], name: Optional[str] = None):
    """A Keras metric reporting sum(value at present labels) / (present labels) over the
    epoch, for a per-element loss or metric.

    Put it in `weighted_metrics` (plain `metrics` get no sample weights): seqpipe's weights
    are > 0 exactly at present labels of real timesteps, whatever the weight mode, so the
    metric reads them as a mask and ignores their scale.

    Args:
      loss: what to average: a Keras loss or metric name ("mse", "mae",
        "binary_crossentropy", "sparse_categorical_crossentropy", "accuracy",
        "sparse_categorical_accuracy", ...; "accuracy" picks binary, sparse categorical or
        categorical accuracy from the shapes, as `compile` does), a `keras.losses.Loss`
        (its unreduced `call`), a Keras metric that is a mean of per-element values
        (`keras.metrics.SparseCategoricalAccuracy()`, `MeanAbsoluteError()`, ...), or a
        function `(y_true, y_pred) -> values` shaped like the weights (extra trailing axes
        are averaged, as Keras's losses average the last one).
      name: the metric's name; by default "masked_" and the loss's name, so the logs show
        `<output>_masked_mse`.

    Returns:
      A `keras.metrics.Metric`.

    Example::

      model.compile(loss="mse", weighted_metrics=[seqpipe.masked_metric("mse")])
      # or per output: weighted_metrics={"y": [seqpipe.masked_metric("mse")],
      #                                  "kind": [seqpipe.masked_metric("accuracy")]}
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
            else:  # seqpipe's weights are shaped like the per-element values
                present = ops.cast(sample_weight, "float32") > 0
                extra = len(values.shape) - len(present.shape)
                if extra > 0:  # binary_accuracy keeps the last axis; losses average it
                    values = ops.mean(values, axis=tuple(range(-extra, 0)))
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


_ACCURACY = ("accuracy", "acc")


def _per_element(keras, given) -> Callable:
    """The per-element function of what `masked_metric` was given."""
    found = given
    if isinstance(given, str):
        if given in _ACCURACY:
            return _accuracy(keras)
        try:
            found = keras.losses.get(given)
        except ValueError:
            try:
                found = keras.metrics.get(given)
            except ValueError:
                raise ValueError(
                    f"masked_metric: {given!r} is neither a Keras loss nor a Keras metric; "
                    f"give a name such as 'mse', 'mae', 'accuracy' or "
                    f"'sparse_categorical_accuracy', or a function (y_true, y_pred) -> "
                    f"values") from None
    if isinstance(found, keras.losses.Loss):
        return found.call  # the per-element values, before the instance's reduction
    if isinstance(found, keras.metrics.Metric):
        # A mean of per-element values (MeanMetricWrapper) keeps its function; a metric
        # such as AUC or Precision is not an average over elements and cannot be masked so.
        function = getattr(found, "_fn", None)
        if function is None:
            raise TypeError(
                f"masked_metric takes metrics that are a mean of per-element values "
                f"(accuracy, mae, ...); {found.name!r} ({type(found).__name__}) is not. Put "
                f"it in weighted_metrics as it is: seqpipe's weights are 0 at padding and "
                f"missing labels.")
        extra = dict(getattr(found, "_fn_kwargs", None) or {})
        return (lambda y_true, y_pred: function(y_true, y_pred, **extra)) if extra else function
    if callable(found):
        return found
    raise TypeError(f"masked_metric: loss must be a Keras loss or metric name, a "
                    f"keras.losses.Loss, a keras.metrics.Metric or a function (y_true, y_pred) "
                    f"-> values; got {given!r}")


def _accuracy(keras) -> Callable:
    """'accuracy' as `compile` reads it: binary for one score per label, sparse
    categorical for class ids against scores, categorical for one-hot labels."""
    def accuracy(y_true, y_pred):
        if y_pred.shape[-1] == 1:
            return keras.metrics.binary_accuracy(y_true, y_pred)
        if len(y_true.shape) < len(y_pred.shape) or y_true.shape[-1] == 1:
            return keras.metrics.sparse_categorical_accuracy(y_true, y_pred)
        return keras.metrics.categorical_accuracy(y_true, y_pred)
    return accuracy


def _loss_name(loss) -> str:
    if isinstance(loss, str):
        return loss
    return str(getattr(loss, "name", None) or getattr(loss, "__name__", "loss"))
