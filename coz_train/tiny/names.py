"""The prefixes of the offline model names (`tiny:<arch>[@seed]`, `random:<hub id>[...]`), free of the torch
import of the modules that build them, so that a run's model names can be checked before torch loads."""

TINY_PREFIX = "tiny:"
RANDOM_PREFIX = "random:"
