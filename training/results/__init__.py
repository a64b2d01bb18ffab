"""Numbers in the README and docs/ come from committed results files, never typed by hand.

- `stamp`: where a result came from (date, commit, CPU model and the SIMD flags that decide which kernels run);
  runs write it as ``stamp.json`` in their run folder, results files carry it under ``"stamp"``.
- `tables`, `ablation_tables`, `engine_tables`: markdown tables rendered from results files.
- `run_files`: a finished run's results file (``collect``), stamping a file afterwards (``stamp``).
- `markers`: finds ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` blocks in markdown and replaces
  what is between them with the table NAME renders (`registry` maps each NAME to its files and renderer).
- ``python -m training.results`` (``make results``): render every block, check them (``--check``), copy a run's
  metrics into docs/results/ (``collect``) or stamp a results file that lacks one (``stamp``).

Stdlib only: rendering the docs never imports torch.
"""
