"""`python -m coz_train.critic_server critic=<option> server.port=<port>`: serve the critic VLM over HTTP.

The same Hydra configs as training: `critic=qwen2_5_vl_7b`, `critic=internvl2_5_8b` (the paper's critic,
converted once to the native layout) or any `backend: hf` option (`critic=tiny` for the offline one) picks
the model, the `server` section the address and limits, e.g.
    python -m coz_train.critic_server critic=internvl2_5_8b server.port=8000
    COZ_CRITIC_TOKEN=... python -m coz_train.critic_server critic=qwen2_5_vl_7b server.host=0.0.0.0
Trainers then use `critic=server critic.url=http://<host>:<port>`.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from coz_train.config import config_dir, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    from coz_train.critic_server.app import serve

    serve(cfg)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not any(arg.startswith("hydra.job.name=") for arg in sys.argv[1:]):
        sys.argv.insert(1, "hydra.job.name=critic_server")  # the log file is critic_server.log, not train.log
    main()
