"""What a batch row holds: one `BatchKind` per kind of batch (whole sequences, windows),
behind one protocol (`kind`); `kinds` says which a config makes. `block` is what every
kind assembles its batches in; `buckets` and `window_plan` plan the epochs of whole
sequences and of windows."""
