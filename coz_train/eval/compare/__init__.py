"""Which differences between eval runs hold: `python -m coz_train.eval.compare <run> <run> [...]`.

Runs of one protocol (the same images, scales, metrics and other result-changing eval keys) are
compared per method, metric and scale on paired per-image differences: a 95% bootstrap interval of the
mean difference, a Wilcoxon signed-rank test, Holm over the whole table. Runs that differ only in a seed
(the adapter's training seed, found from the training run's config, or the eval seed; or `--group`) are
one group, and a difference holds only when it holds in each seed and exceeds the between-seed spread.

- runs.py: reading run folders, the protocol check, the common images
- groups.py: seed replicates, found or given
- pairs.py: which pairs (`--baseline`: a method within each group, or a group across groups)
- verdicts.py: the statistics (coz_train.stats) and the verdicts
- report.py, figure.py: compare.md, compare.csv, compare.png
- run.py: one comparison start to end (`compare(Options(...))`); __main__.py: the command line

docs/compare.md documents the command, the definitions and the protocol presets.
"""
