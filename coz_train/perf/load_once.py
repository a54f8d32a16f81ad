"""Each training row read and decoded once per generation batch (`perf.load_once`).

TRL's sampler hands the dataloader every generation batch `steps_per_generation x num_iterations` times (8
at the paper's setting: once per micro-batch, of which only the first is generated on), each with G copies
of every prompt: 512 rows read, 1024 zoom images decoded from PNG per optimizer step, for 8 distinct rows
and 16 distinct images. `RowsOnce` stands in for the training dataset: it reads each distinct row of a
request once, keeps the rows of the last generation batch, and hands out a row of its own for every index
(a copy of the prompt messages, a list of the images) holding the same decoded image objects. The images
are the ones the dataset decodes, so everything after the dataloader sees the same pixels; being the same
objects, they are also hashed once (`perf.image_cache`) and copied once by TRL's deep copy of the prompts.

Nothing downstream writes into a row's images (TRL and the rewards read them); the prompt messages, which
TRL fills with the images, are each row's own.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

from torch.utils.data import Dataset


class RowsOnce(Dataset):
    def __init__(self, dataset: Any, keep: int):
        self.dataset, self.keep = dataset, max(1, int(keep))
        self.rows: OrderedDict[int, dict] = OrderedDict()
        self.reads = self.requests = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # column_names, features, ... of the dataset
        if name in ("dataset", "rows", "keep") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        self.requests += len(indices)
        missing = list(dict.fromkeys(i for i in indices if i not in self.rows))
        if missing:
            fetch = getattr(self.dataset, "__getitems__", None)
            rows = fetch(missing) if fetch is not None else [self.dataset[i] for i in missing]
            self.rows.update(zip(missing, rows, strict=True))
            self.reads += len(missing)
        out = []
        for i in indices:
            self.rows.move_to_end(i)
            row = self.rows[i]
            out.append({k: copy.deepcopy(v) if k == "prompt" else list(v) if k == "images" and v is not None else v
                        for k, v in row.items()})
        while len(self.rows) > max(self.keep, len(set(indices))):
            self.rows.popitem(last=False)
        return out
