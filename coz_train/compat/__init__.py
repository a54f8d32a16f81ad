"""Does the project hold on the next release of transformers, TRL, PEFT or accelerate?

    python -m coz_train.compat [--versions transformers==5.26.0 ...] [--reuse] [--out report.json]

For each library: the project's bound (pyproject.toml), the newest release (PyPI's JSON API, or given by
hand) and whether it lies inside the bound. Then, in a scratch venv (`<checkout>/.compat-venv/`) with the
checkout installed against `.ci/constraints.txt` in which those libraries are the newest releases: the
capability check (per `perf` switch, whether the seams it needs of the libraries hold there:
coz_train/perf/capabilities.py), the perf equality tests (one verdict per switch, from the tests named), the
smoke run with perf=plain and perf=fast, and the tiny benchmark. The report ends with the exact edits
(pyproject.toml bound, constraints lines) when everything holds, or with the broken switch, the seam that
changed or its failing tests, and "do not widen". CONTRIBUTING.md has the release routine.

The command's own process imports no torch or transformers: every check runs in the scratch venv.
Modules: bounds (requirement lines, widening), releases (PyPI), project (the checkout's files), venv, checks
(the subprocesses), verdicts (junit -> switches), report, cli.
"""
