"""What the batches are handed to: `build_dataset(format=...)`'s outputs as peers behind one
base (`base.Output`): a tf.data dataset (`tf_dataset`, over the `seqpipe.tfdata` layer),
a Grain `IterDataset` (`grain_dataset`) and NumPy batches (`numpy_batches`). `build`
chooses one; `load` does the same for a materialized output."""
