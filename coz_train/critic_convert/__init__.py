"""The command that converts InternVL2.5 checkpoints to transformers' native InternVL (critic.backend=hf).

    python -m coz_train.critic_convert <InternVL2.5 folder> <out folder> [--max-tiles 6] [--dtype bfloat16]

then train with `critic=internvl2_5_8b critic.name_or_path=<out folder>` (or give `critic=internvl2_5_8b` the
hub checkpoint itself: the hf critic converts it once into the cache). The conversion itself is
`coz_train.rewards.critic.conversion`, shared with the hf critic.
"""
