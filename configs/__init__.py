"""Packaged as `seqpipe.configs`, so `seqpipe demo` finds demo.yaml from a wheel too."""
