"""Critic reward: a critic VLM sees both zoom images and the candidate prompt and scores it.

The critic gets [previous state, zoomed image] and an instruction (`critic.instruction`) asking
for an integer 0..`critic.score_max` for how accurately and usefully the prompt describes the
zoomed image given the wider view; the reward is score / score_max in [0, 1].

Scoring modes (`critic.scoring`):
- `generate`: the critic writes its answer (greedy) and the first number in it is the score, as
  in the paper. An answer without a number in range gives None for that completion (TRL then
  leaves it out of the group baseline); the fraction is logged as `critic/unparsable`.
- `logits`: one forward pass; the score is the expectation of the next-token distribution
  restricted to the tokens "0".."score_max". Cheaper and never unparsable, but every score must be
  a single token: tokenizers that split numbers into digits (Qwen, InternLM) need score_max <= 9.

Backends (`critic.backend`):
- `hf`: any transformers image-text-to-text model with a chat template (Qwen2.5-VL-7B, native
  InternVL "-hf" checkpoints, ...); both scoring modes; candidates scored in batches. An InternVL2.5
  checkpoint in the hub layout (InternVL2.5-8B: InternLM2.5 language model) is converted once into
  the cache and run natively (`conversion/`; by hand: `python -m coz_train.critic_convert`), unless
  `critic.trust_remote_code`.
- `internvl_remote`: InternVL2/2.5 through `trust_remote_code`, for transformers 4.x only (refused
  under 5.x, where that code does not run): the prompts of the checkpoint's `chat` with InternVL's
  448-px tiling (`tiling.py`), one batched `generate` per call; `generate` mode only.

Every backend's batch goes through the same guard: NaN scores, no score at all, or flat score-token
logits raise `CriticScoringError` (then `reward_failure` retries / stops / skips), never a quiet step.
- `server`: an OpenAI-compatible chat-completions endpoint at `critic.url` (nothing loads here,
  `critic.name_or_path` need not exist locally). One request per candidate, the images as PNG data
  URLs and the same instruction text as `hf`; `critic.concurrency` requests in flight,
  `critic.timeout_s` per request, `critic.retries` retries with exponential backoff on connection
  errors, timeouts and 5xx (never on 4xx), then `CriticUnavailableError` (never a fake score).
  `Authorization: Bearer $<critic.token_env>` is sent when that variable is set.
  Which scoring mode works with which server:
  - `python -m coz_train.critic_server` (this package): both modes, computed by the same code as
    `hf` (greedy; raw-logit logprobs). It answers any `top_logprobs` (-1 = the whole vocabulary),
    so `logits` is exactly the in-process score when K covers the score tokens (see below).
  - vLLM / SGLang OpenAI servers: `generate` always; `logits` through `logprobs: true` +
    `top_logprobs: K` when the server returns them (else a clear CriticRequestError). vLLM (checked
    in its chat-completions protocol and sampling params): `top_logprobs` without `logprobs: true`
    is a 400; K is capped by the server's `--max-logprobs` (default 20; -1 = the vocabulary), a
    larger K is a 400 "Requested sample logprobs of N, which is greater than max allowed: 20";
    its default `--logprobs-mode raw_logprobs` reports the raw logits' log-probabilities (before
    temperature, penalties and logits processors), as the in-process `logits` mode uses; the
    answer is `choices[0].logprobs.content[i].top_logprobs` = [{token, logprob, bytes}].
  In `logits` mode the expectation is over the score tokens "0".."score_max" found among the K
  returned tokens, renormalised; exact only when all score_max + 1 of them are in the top K
  (K >= score_max + 1 is necessary, not sufficient; a missing score token is less likely than
  every returned token). No score token in the top K gives None for that candidate. K is
  `ServerCritic(top_logprobs=...)`, else `critic.top_logprobs` if the config has that key, else
  max(20, score_max + 1) (OpenAI's and vLLM's default maximum). Serve two images per prompt (vLLM:
  `--limit-mm-per-prompt '{"image": 2}'`) and give vLLM's `--api-key` to `critic.token_env`.

The critic is frozen: eval mode, no gradients, on `critic.device`.
"""

from coz_train.rewards.critic.client import (
    CriticRequestError,
    CriticUnavailableError,
    ServerCritic,
    expected_score,
    png_data_url,
)
from coz_train.rewards.critic.common import CriticScoringError, critic_device, instruction_text, parse_score
from coz_train.rewards.critic.hf import HFCritic
from coz_train.rewards.critic.internvl_remote import InternVLRemoteCritic
from coz_train.rewards.critic.reward import (
    BACKENDS,
    CriticReward,
    build_critic_reward,
    critic_prefix_wanted,
    install_critic_switches,
    load_critic_backend,
    with_instruction,
)

__all__ = [
    "BACKENDS", "CriticRequestError", "CriticReward", "CriticScoringError", "CriticUnavailableError", "HFCritic", "InternVLRemoteCritic",
    "ServerCritic", "build_critic_reward", "critic_device", "critic_prefix_wanted", "expected_score",
    "install_critic_switches", "instruction_text", "load_critic_backend", "parse_score", "png_data_url",
    "with_instruction",
]
