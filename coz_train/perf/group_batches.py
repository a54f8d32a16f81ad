"""Micro-batches of whole groups (`perf.group_batches`).

TRL shuffles the rows of a generation batch before splitting it into micro-batches, which scatters
each group's G completions; the group-shared prompt (`perf.group_prefix`) then finds little to
share in the training pass. `group_shuffle` shuffles groups instead, keeping each group's rows
together, and draws the same random numbers as TRL's row shuffle, so everything after it (the
next rollouts' sampling included) is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch


def group_runs(prompt_ids: torch.Tensor, pixel_values: Any = None) -> list[list[int]]:
    """Runs of adjacent rows with the same prompt (tokens and, when given per row, pixels): the groups."""
    runs: list[list[int]] = []
    for row in range(prompt_ids.shape[0]):
        if runs:
            prev = runs[-1][0]
            same = torch.equal(prompt_ids[prev], prompt_ids[row])
            if same and isinstance(pixel_values, list):
                same = torch.equal(pixel_values[prev], pixel_values[row])
            if same:
                runs[-1].append(row)
                continue
        runs.append([row])
    return runs


def group_shuffle(seq_dict: dict[str, Any]) -> dict[str, Any]:
    """Shuffle groups, keeping each group's rows together, with the same random draw as TRL's row shuffle.

    TRL draws `torch.randperm(rows)`; the groups are ordered by where their first row lands in that
    permutation, so the generator state afterwards is the one the plain path leaves.
    """
    rows = len(next(v for v in seq_dict.values() if v is not None))
    permutation = torch.randperm(rows)
    runs = group_runs(seq_dict["prompt_ids"], seq_dict.get("pixel_values"))
    rank = torch.empty(rows, dtype=torch.long)
    rank[permutation] = torch.arange(rows)
    order = sorted(range(len(runs)), key=lambda g: int(rank[runs[g][0]]))
    index = torch.tensor([row for g in order for row in runs[g]], dtype=torch.long)

    def permute(value: Any) -> Any:
        if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
            return value
        if isinstance(value, torch.Tensor):
            return value[index.to(value.device)]
        return [value[i] for i in index.tolist()]

    return {key: permute(value) for key, value in seq_dict.items()}
