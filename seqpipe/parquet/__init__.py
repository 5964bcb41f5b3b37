"""Reading Parquet into sequences: the files and their footers (`source`, `footers`),
grouping rows into sequences (`sequences`, `missing`), streaming row groups in id order
(`stream`) and regrouping a source whose rows are not (`regroup`)."""
