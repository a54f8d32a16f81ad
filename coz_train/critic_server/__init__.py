"""The critic VLM served over HTTP: `python -m coz_train.critic_server` (see `coz_train.critic_server.app`).

Kept import-free so that `python -m coz_train.critic_server --help` does not load torch.
"""
