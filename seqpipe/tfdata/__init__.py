"""The tf.data layer: the datasets `model.fit` takes (`dataset`), the hand-off of NumPy
batches to TensorFlow, `load_materialized` (`load`) and tf.data service workers (`service`).
The only folder whose modules build TensorFlow graphs."""
