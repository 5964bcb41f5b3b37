"""Materialized outputs: the TFRecord format (`records`), the manifest (`manifest`),
writing them locally (`write`) or on Apache Beam (`beam`), reading one part back as a
source of sequences (`read`), and the progress bar of a long write (`progress`)."""
