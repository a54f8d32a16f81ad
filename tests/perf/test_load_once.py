"""perf.load_once: each training row read and decoded once per generation batch, each row handed out its own."""

from __future__ import annotations

import datasets
from PIL import Image

from coz_train.perf.load_once import RowsOnce


class CountingRows:
    """A dataset of zoom rows that counts the rows it reads (it decodes a new image object per read)."""

    def __init__(self, n: int):
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        return {"prompt": [{"role": "system", "content": [{"type": "text", "text": f"row {i}"}]}],
                "images": [Image.new("RGB", (8, 8), (i, 0, 0)), Image.new("RGB", (8, 8), (0, i, 0))], "depth": i}


def test_a_generation_batch_read_eight_times_is_read_once_with_rows_of_their_own():
    source = CountingRows(6)
    rows = RowsOnce(source, keep=2)
    batch = [0, 0, 0, 3, 3, 3]  # 2 prompts x 3 copies, as TRL's sampler asks for them
    first = rows.__getitems__(batch)
    for _ in range(7):  # TRL asks for the same generation batch once per micro-batch
        again = rows.__getitems__(batch)
    assert source.reads == 2 and rows.reads == 2 and rows.requests == 8 * 6
    assert [r["depth"] for r in again] == [0, 0, 0, 3, 3, 3]
    assert first[0]["images"][0] is first[1]["images"][0] is again[2]["images"][0]  # decoded once: the same object
    assert first[0]["images"] is not first[1]["images"] and first[0]["prompt"] is not first[1]["prompt"]
    first[0]["prompt"][0]["content"].append({"type": "image"})  # TRL fills a row's messages: the others stay
    assert len(first[1]["prompt"][0]["content"]) == 1 and len(rows[0]["prompt"][0]["content"]) == 1
    rows.__getitems__([1, 1, 1, 2, 2, 2])  # the next generation batch: its rows read, the last ones dropped
    assert source.reads == 4 and sorted(rows.rows) == [1, 2]
    assert len(rows) == 6


def test_a_datasets_dataset_gives_the_same_rows_and_its_attributes(tmp_path):
    images = [Image.new("RGB", (8, 8), (i, 2 * i, 3)) for i in range(3)]
    ds = datasets.Dataset.from_dict({"images": [[im, im] for im in images], "depth": [0, 1, 2]},
                                    features=datasets.Features({"images": datasets.Sequence(datasets.Image()),
                                                                "depth": datasets.Value("int32")}))
    rows = RowsOnce(ds, keep=3)
    assert rows.column_names == ds.column_names
    for got, want in zip(rows.__getitems__([2, 2, 0]), ds.__getitems__([2, 2, 0]), strict=True):
        assert got["depth"] == want["depth"]
        assert [im.tobytes() for im in got["images"]] == [im.tobytes() for im in want["images"]]
