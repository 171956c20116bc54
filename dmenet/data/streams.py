"""The training streams of SPEC section 1 as loaders: one :class:`TrainingStream` per loader of
the training ``CombinedLoader``, and the DataLoader every stream and evaluation set uses.

* :class:`TrainingStream`: a dataset, its batch size and, for a stream whose rows join another
  stream's batch, that stream (:func:`append_rows`); :func:`synthetic_streams` splits I_s's
  batch between rendered crops and released files;
* :class:`ReleasedTrainingView`: released SYNDOF files as the synthetic contract
  ``{"image", "label", "binary"}``;
* :func:`split_iterations`: a batch of several training iterations (rendered ahead) as one
  batch dict per iteration;
* :class:`UserErrorLoader`: a DataLoader whose workers' data mistakes reach the user as one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from dmenet.data.thin_lens import binary_from_coc, coc_from_sigma
from dmenet.errors import DMENetError

__all__ = ["SYNTHETIC_KEYS", "ReleasedTrainingView", "TrainingStream", "UserErrorLoader",
           "append_rows", "split_iterations", "synthetic_streams"]

SYNTHETIC_KEYS: tuple[str, ...] = ("image", "label", "binary")
"""The synthetic contract: what L_B, L_aux and L_C read from the ``"synthetic"`` batch."""


@dataclass
class TrainingStream:
    """One loader of the training ``CombinedLoader``: a dataset and its batch size.

    ``append_to``: the stream whose (rendered) batch this stream's rows are appended to
    (:func:`append_rows`; the released SYNDOF files beside on-the-fly synthesis); ``None``: a
    batch entry of its own.
    """

    dataset: Dataset
    batch_size: int
    append_to: str | None = None


def synthetic_streams(batch_size: int, rendered: Dataset | None,
                      files: Dataset | None) -> dict[str, TrainingStream]:
    """The I_s streams: rendered crops and/or released files, ``batch_size`` rows per batch in
    all. With both, the rendered crops fill the larger half of the batch as ``"synthetic"`` and
    the files the smaller half as ``"synthetic_files"``, appended to it (:func:`append_rows`)."""
    if rendered is not None and files is not None:
        return {"synthetic": TrainingStream(rendered, max(1, math.ceil(batch_size / 2))),
                "synthetic_files": TrainingStream(files, max(1, batch_size // 2),
                                                  append_to="synthetic")}
    only = rendered if rendered is not None else files
    return {} if only is None else {"synthetic": TrainingStream(only, batch_size)}


def append_rows(batch: dict[str, Any], streams: dict[str, TrainingStream]) -> dict[str, Any]:
    """Move the rows of every stream with an ``append_to`` into that stream's batch entry
    (:data:`SYNTHETIC_KEYS`, on the target's device and dtype); in place, returns ``batch``."""
    for name, stream in streams.items():
        if stream.append_to is not None and name in batch:
            rows, target = batch.pop(name), batch[stream.append_to]
            batch[stream.append_to] = {key: torch.cat([target[key], rows[key].to(target[key])])
                                       for key in SYNTHETIC_KEYS}
    return batch


def split_iterations(batch: dict[str, dict[str, Any]], iterations: int) -> list[dict[str, Any]]:
    """A batch holding ``iterations`` training iterations' rows of every stream (each stream's
    rows in iteration order, as a loader with ``iterations`` times the stream's batch size
    yields them) -> one batch dict per iteration, each with its share of every stream's rows
    (views, no copies)."""
    out: list[dict[str, Any]] = [{} for _ in range(iterations)]
    for name, stream in batch.items():
        rows = {len(v) for v in stream.values()}
        if len(rows) != 1 or next(iter(rows)) % iterations:
            raise DMENetError(f"the {name} stream's batch cannot be split into {iterations} "
                              f"iterations (rows per entry: {sorted(rows)})")
        share = next(iter(rows)) // iterations
        for i, part in enumerate(out):
            part[name] = {key: value[i * share:(i + 1) * share] for key, value in stream.items()}
    return out


class ReleasedTrainingView(Dataset):
    """Released SYNDOF items as the synthetic contract: ``{"image", "label", "binary"}``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        # binary map from the label: blurred where the CoC (paper rule) exceeds 1 px
        binary = binary_from_coc(coc_from_sigma(item["sigma_px"]))
        return {"image": item["image"], "label": item["label"], "binary": binary}


class UserErrorLoader(DataLoader):
    """A DataLoader that re-raises a user's data mistake from a worker process as one line.

    A :class:`DMENetError` raised in a worker reaches the main process re-created with the
    worker's whole traceback as its message; the command line would print that. Here it is
    cut back to the original message (its last line), which names the file.
    """

    def __iter__(self):
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except DMENetError as exc:
                text = str(exc)
                if "Original Traceback" not in text:
                    raise
                last = [line for line in text.strip().splitlines() if line.strip()][-1]
                message = last.split(": ", 1)[1] if last.startswith("dmenet.errors.") else last
                raise type(exc)(message) from None
            yield batch
