"""Library log lines that say nothing a user of this project can act on, dropped at their source logger.

DeepSpeed is imported by accelerate whenever it is installed (`accelerate.utils.extract_model_from_parallel`,
which every `save_pretrained` and `unwrap_model` runs), also in runs that use no DeepSpeed config. On a machine
without a GPU its import logs "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to
detect it." (logger "DeepSpeed", WARNING) on every run. A filter on that logger drops this one line unless DeepSpeed
is in use: `accelerate launch` with a DeepSpeed config (recipes/accelerate_configs/zero*.yaml), and transformers for
`grpo.deepspeed`, set ACCELERATE_USE_DEEPSPEED=true before DeepSpeed is imported.

bitsandbytes (pulled in by pyiqa, imported by PEFT) on a CPU with AVX512-BF16, with the `kernels` package that
transformers 5.25 requires, asks the hub for a 4-bit CPU kernel when it is imported and, refused, logs "Failed to
load CPU gemm_4bit_forward from kernels-community ..." (logger "bitsandbytes.backends.cpu.ops", WARNING) on every
run. The project trains no 4-bit model on a CPU; that line is dropped.

`quiet_library_notices()` runs when the `coz_train` package is imported: before any entry point
(`python -m coz_train`, `coz_train.eval`, `coz_train.critic_server`, ...) can save or wrap a model.
"""

from __future__ import annotations

import logging
import os

DEEPSPEED_LOGGER = "DeepSpeed"  # deepspeed.utils.logging.logger
DEEPSPEED_CPU_NOTICE = "Setting accelerator to CPU"
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BITSANDBYTES_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def deepspeed_in_use() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("true", "1")


class _DeepSpeedCpuNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return deepspeed_in_use() or not str(record.msg).startswith(DEEPSPEED_CPU_NOTICE)


class _BitsandbytesKernelNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(BITSANDBYTES_KERNEL_NOTICE)


def quiet_library_notices() -> None:
    """Install the filters (once; DeepSpeed's logger keeps them when DeepSpeed configures it on import)."""
    for name, kind in ((DEEPSPEED_LOGGER, _DeepSpeedCpuNotice), (BITSANDBYTES_CPU_LOGGER, _BitsandbytesKernelNotice)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
