"""A checkpointable iterator over a grain MapDataset of batches, portable across worker counts."""

from __future__ import annotations

import grain
import numpy as np


class BatchIterator:
    """Iterator over a grain MapDataset of batches whose state is the number of batches already returned.

    grain's own iterator states depend on the number of worker processes; this one is `{"position": k}`
    whatever the threads and workers, so a run can resume on a machine with another worker count.
    `set_state` restarts reading at batch k (random access: nothing before it is read again).
    """

    def __init__(
        self, dataset: grain.MapDataset, *, num_threads: int = 4, prefetch: int = 4, num_workers: int = 0
    ):
        self._dataset = dataset
        self._options = (num_threads, prefetch, num_workers)
        self._position = 0
        self._iterator: grain.DatasetIterator | None = None  # started lazily, at self._position

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._iterator = read_batches(self._dataset[self._position :], *self._options)
        batch = next(self._iterator)
        self._position += 1
        return batch

    def __len__(self) -> int:
        """Batches left (very large for an infinite training iterator)."""
        return len(self._dataset) - self._position

    def get_state(self) -> dict[str, int]:
        """A JSON-able state for the checkpoint."""
        return {"position": self._position}

    def set_state(self, state: dict[str, int]) -> None:
        """Continue after the batches counted in `state` (from `get_state`)."""
        self.close()
        self._position = int(state["position"])

    def close(self) -> None:
        """Stops worker processes, if any (also done when the iterator is garbage-collected)."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None


def read_batches(
    ds: grain.MapDataset, num_threads: int, prefetch: int, num_workers: int
) -> grain.DatasetIterator:
    """Reads with `num_threads` threads and `prefetch` batches ahead, in `num_workers` processes if > 0."""
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        from absl import flags

        if (
            not flags.FLAGS.is_parsed()
        ):  # grain's worker processes read absl flags; outside absl.app, use defaults
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iter_ds)
