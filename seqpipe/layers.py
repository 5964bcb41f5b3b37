"""Keras layers for packed rows (`batching.packing`), on every Keras 3 backend.

A packed row holds several sequences end to end; `segment_ids` says which timestep is
whose (1..k, 0 at padding). Attention must not look across sequences, and a per-sequence
head must pool each sequence on its own:

    segment_ids = keras.Input((length,), dtype="int32", name="segment_ids")
    mask = seqpipe.layers.SegmentAttentionMask()(segment_ids)
    h = keras.layers.MultiHeadAttention(4, 16)(h, h, attention_mask=mask)
    per_sequence = seqpipe.layers.SegmentPooling(max_segments)([h, segment_ids])

Recurrent layers cannot be confined to a segment this way: an RNN over a packed row
carries its state from one sequence into the next. Use whole sequences for them.

Importing this module imports Keras, which is why `import seqpipe` does not.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="seqpipe")
class SegmentAttentionMask(keras.layers.Layer):
    """`segment_ids` `(B, L)` -> bool `(B, L, L)`, True where query and key belong to the
    same sequence, for `MultiHeadAttention(attention_mask=...)`.

    A padding query (segment 0) may attend to its own position only, so that its softmax
    has one finite entry on every backend; its outputs get weight 0.

    Args:
      causal: also False where the key comes after the query (a decoder's mask); within a
        segment that is "not after it in the sequence".
    """

    def __init__(self, causal: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.causal = causal

    def call(self, segment_ids):
        query = ops.expand_dims(segment_ids, 2)
        key = ops.expand_dims(segment_ids, 1)
        length = ops.shape(segment_ids)[1]
        at = ops.arange(length)
        same_place = ops.expand_dims(ops.equal(ops.expand_dims(at, 1),
                                               ops.expand_dims(at, 0)), 0)
        allowed = ops.logical_and(ops.equal(query, key), ops.greater(key, 0))
        allowed = ops.logical_or(allowed, ops.logical_and(ops.equal(query, 0), same_place))
        if self.causal:
            allowed = ops.logical_and(allowed, ops.expand_dims(
                ops.greater_equal(ops.expand_dims(at, 1), ops.expand_dims(at, 0)), 0))
        return allowed

    def get_config(self) -> dict:
        return {**super().get_config(), "causal": self.causal}


@keras.saving.register_keras_serializable(package="seqpipe")
class SegmentPooling(keras.layers.Layer):
    """`[values (B, L, k), segment_ids (B, L)]` -> `(B, max_segments, k)`: slot j holds the
    mean of segment j + 1's values (0 for a slot with no segment), where seqpipe puts
    per-sequence labels and weights.

    Args:
      max_segments: `batching.packing.max_segments` of the config.
    """

    def __init__(self, max_segments: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_segments = int(max_segments)

    def call(self, inputs):
        values, segment_ids = inputs
        slots = ops.arange(1, self.max_segments + 1, dtype=segment_ids.dtype)
        member = ops.cast(ops.equal(ops.expand_dims(segment_ids, -1), slots), values.dtype)
        sums = ops.einsum("bls,blk->bsk", member, values)
        counts = ops.expand_dims(ops.sum(member, axis=1), -1)
        return sums / ops.maximum(counts, 1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "max_segments": self.max_segments}
