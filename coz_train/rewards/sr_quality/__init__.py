"""SR-quality reward (`rewards.sr_quality`): what a candidate prompt does to the super-resolved image.

The paper's critic judges the prompt text against the two images; this reward judges the image the
prompt makes, which is what the user of Chain-of-Zoom sees. Off by default (weight 0):

    python -m coz_train +experiment=grpo_qwen data.image_dir=/data/LSDIR rewards.sr_quality.weight=1.0 \\
        rewards.sr_quality.backbone.lora_dir=/models/osediff_sd3 rewards.sr_quality.metric=musiq

For each candidate (completion) of a training sample ([previous state, zoomed image] + crop_box):
1. the crop of the previous state that the zoomed image enlarges (`crop_box`, P/s px) and the candidate
   prompt go through the SR backbone (`rewards.sr_quality.backbone`, an eval backbone config; OSEDiff-SD3
   by default), as one step of the CoZ chain makes state k: a P x P output. All candidates of one reward
   call go through the backbone together (`batch_size`: null = one call), identical (crop, prompt) pairs once;
2. a no-reference metric of the evaluation (`metric`: niqe, brisque, piqe, musiq, maniqa, clipiqa) scores
   the output, mapped to [0, 1] by a fixed range, lower-is-better metrics with their sign turned
   (`scoring.unit_score`; `range` overrides the default range);
3. optionally (`reference_aware`) the output's agreement with the previous state: box-downsampled to the
   crop's size it should be that crop; the mean absolute difference e gives 1 - min(1, e / reference_tolerance)
   (`scoring.low_frequency_error`), so hallucinated texture that contradicts the wider view costs reward;
4. optionally (`critic_judge`) the critic of the `critic` group (the same loaded model as the critic reward)
   judges [previous state, SR output] + prompt with `critic_instruction` (null: critic.instruction), score / score_max;
5. the reward is the weighted mean of the parts that are on (iqa 1, reference `reference_weight`, critic
   `critic_weight`), in [0, 1]; a part without a score (NIQE of a flat output) makes it None for that candidate.

Refused before any model loads: a prompt-agnostic backbone (realesrgan_x4plus, bicubic, nearest: every
candidate of a group would get the same output and score, a zero advantage), an unknown metric, a bad range,
data.single_image_prompt=true (no previous state to crop). The backbone and the metric load once, frozen
(eval, no gradients, run under inference mode), on `rewards.sr_quality.device`. Logged beside TRL's
`rewards/sr_quality/mean` and `/std`: `sr_quality/iqa`, `sr_quality/<metric>` (the raw value), with the
options `sr_quality/reference`, `sr_quality/reference_error`, `sr_quality/critic`, and
`sr_quality/undefined`, `sr_quality/backbone_s`, `sr_quality/metric_s` (seconds per reward call).
Its cost: `python -m coz_train.rewards.sr_quality.bench` (docs/sr_quality.md, "Cost", has the numbers).
"""

from coz_train.rewards.sr_quality.reward import SRQualityReward, build_sr_quality_reward, frozen_backbone, load_metric
from coz_train.rewards.sr_quality.scoring import METRIC_RANGES, agreement, combine, low_frequency_error, unit_score
from coz_train.rewards.sr_quality.settings import SRQualitySettings, check_settings, parse_settings

__all__ = [
    "METRIC_RANGES", "SRQualityReward", "SRQualitySettings", "agreement", "build_sr_quality_reward",
    "check_settings", "combine", "frozen_backbone", "load_metric", "low_frequency_error", "parse_settings",
    "unit_score",
]
