"""What training, export and serving all need, in one torch-free copy.

- `image_decoding`: the one image decoding rule (encoded bytes -> 8-bit RGB), shared by training's
  evaluation transform and by serving, so both feed the network the same pixels;
- `atomic_file`: atomic, fsynced file writes;
- `json_document`: reading a JSON document that must hold an object, with the caller's error;
- `config_overrides`: the ``--set section.key=value`` grammar of every command with a typed config;
- `deprecated_flags`: old flag spellings that still work and name their new spelling;
- `search_cost_table`: the table of a ``cdd-bench search-cost`` result (the benchmark's report and the
  docs' rendered table).

The import rule (docs/architecture.md): this package imports the standard library, numpy and Pillow only,
never torch, training, export or serving, so a serving-only install carries it without any training code.
"""

__all__: list[str] = []
