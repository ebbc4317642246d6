"""prefopt's data layer: public preference datasets in, canonical paired/unpaired rows out.

* :mod:`prefopt.data.schema` — the canonical columns and formats, ``data_kind``/``data_format``;
* :mod:`prefopt.data.sources` — one reader per public format, registered by name
  (:mod:`prefopt.data.registry`);
* :mod:`prefopt.data.transforms` — unpair/pair/dedupe/margin/split and ``prepare`` (a recipe's
  whole ``data:`` block);
* :mod:`prefopt.data.report` — the drop report: every removed row is counted with a reason;
* :mod:`prefopt.data.fast_tokenize` — batched tokenisation identical to ``prefopt.data.tokenization``;
* :mod:`prefopt.data.inspect` / :mod:`prefopt.cli.data` — ``prefopt data inspect|convert|sources``.

See docs/data.md.
"""
