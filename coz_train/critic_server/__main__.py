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

import hydra
from omegaconf import DictConfig

from coz_train.cli import hydra_errors, run_hydra
from coz_train.config import config_dir, register_configs

register_configs()
OFFLINE = "python -m coz_train.critic_server critic=tiny"


def offline_advice(message: str) -> str:
    """A model-availability message with the server's offline choice: the tiny critic, not a training run."""
    advice = f"  - or serve the tiny critic offline: {OFFLINE}"
    lines = [advice if "+experiment=smoke" in line else line for line in message.splitlines()]
    return "\n".join(lines if advice in lines else [*lines, advice])


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    with hydra_errors():
        from coz_train.critic_server.app import serve
        from coz_train.hub import ModelNotAvailableError

        try:
            serve(cfg)
        except ModelNotAvailableError as err:
            raise ModelNotAvailableError(offline_advice(str(err))) from err


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_hydra(main, job="critic_server")  # the log file is critic_server.log, not train.log
