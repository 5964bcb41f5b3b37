"""seqpipe's private parts: compiled kernels (`runs`), threads, the memory pool (`buffers`),
paths and URIs, and the lazy TensorFlow handle. Nothing here is public API."""
