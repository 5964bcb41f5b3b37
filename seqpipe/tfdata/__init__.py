"""The tf.data layer: the `tf.data.Dataset` of a pipeline's batches (`dataset`), the hand-off
of NumPy blocks to TensorFlow (`handoff`) and batching in TensorFlow ops alone for tf.data
service workers (`service`). The only folder whose modules build TensorFlow graphs."""
