"""InternVL2.5 checkpoints (hub layout, remote code) as transformers' native InternVL, for `critic.backend=hf`.

- `convert.py`: the mapping of weights, configs, tokenizer and chat template onto the native layout;
- `build.py`: writing the converted folder (`convert`);
- `cache.py`: a hub checkpoint converted once into the cache and loaded from there (`native_internvl`, what
  the hf critic calls).

The conversion by hand is the command `python -m coz_train.critic_convert`, which imports it from here.
"""

from coz_train.rewards.critic.conversion.build import convert
from coz_train.rewards.critic.conversion.cache import native_internvl

__all__ = ["convert", "native_internvl"]
