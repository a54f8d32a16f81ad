"""The documentation site's reference pages, written from the code when the site is built.

`mkdocs build` (mkdocs.yml: `hooks: [coz_train/docs_reference/mkdocs_hook.py]`) adds these pages to the site;
none of them is committed, so none can drift from the code:

- `reference/configuration.md`: every config section and key of `coz_train.config.CozTrainConfig` with its
  type, the value a run gets from `conf/config.yaml`, the schema default and the help text (the trailing
  `# comment` of the field in the dataclass, the class docstring for a section; `grpo`: TRL's own help);
  every config group's options and the experiments.
- `reference/study-configuration.md`: the same for `conf/study.yaml` (`coz_train.study.config.StudyConfig`).
- `reference/commands.md`: every `python -m coz_train...` command (`__main__.py` files and modules with a
  `__main__` block): Hydra commands, argparse commands with their `--help`, the rest with their docstring.
- `reference/registries.md`: the rewards (names, parameters, docstrings), the SR backbones and the metrics.

The hook also checks the hand-written pages: a config key named there that the schema does not have is a
warning, so `mkdocs build --strict` fails (`doc_keys`).
"""
