"""InternVL2.5 checkpoints converted to transformers' native InternVL, so the critic runs with critic.backend=hf.

    python -m coz_train.critic_convert <InternVL2.5 folder> <out folder> [--max-tiles 6] [--dtype bfloat16]

then train with `critic=internvl2_5_8b critic.name_or_path=<out folder>` (or give `critic=internvl2_5_8b` the
hub checkpoint itself: the hf critic converts it once into the cache). See `convert.py`.
"""

from coz_train.critic_convert.build import convert

__all__ = ["convert"]
