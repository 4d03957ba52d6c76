"""Run a chain of stages over records: in-process (default) or on Ray Data.

A stage is a callable ``list[record] -> list[record]`` with ``name`` and ``uses_model``; model
stages also have ``setup()``. Both executors yield finished records as they complete, so the
caller can store each one at once (resume).

- ``LocalExecutor``: CPU stages run in a thread pool on batches ahead of the model, which runs
  in the calling thread (captions; the local run's split, scoring and cutting are one stream
  over worker processes, ``curation.stream``).
- ``RayExecutor``: ``ray.data`` ``map_batches``: CPU stages as tasks, model stages as actor pools
  (one model load per actor, ``num_gpus`` each). Records travel as pickled bytes in one column,
  so nested dicts and numpy frames need no Arrow schema.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from tqdm.auto import tqdm

from curation.config import CurationConfig

Record = dict[str, Any]
Stage = Callable[[list[Record]], list[Record]]


def _chain(stages: list[Stage], batch: list[Record]) -> list[Record]:
    for stage in stages:
        batch = stage(batch)
    return batch


def _groups(stages: list[Stage]) -> list[tuple[bool, list[Stage]]]:
    """Consecutive stages grouped by kind: ``[(uses_model, [stage, ...]), ...]``."""
    groups: list[tuple[bool, list[Stage]]] = []
    for st in stages:
        model = bool(getattr(st, "uses_model", False))
        if groups and groups[-1][0] == model:
            groups[-1][1].append(st)
        else:
            groups.append((model, [st]))
    return groups


class LocalExecutor:
    """In-process execution; CPU stage groups run ``workers`` batches ahead in threads."""

    def __init__(self, batch_size: int, workers: int):
        self.batch_size, self.workers = batch_size, workers

    def run(self, stages: list[Stage], records: list[Record], desc: str, unit: str = "clip") -> Iterator[Record]:
        """Yield every output record; progress bars per stage show records/s."""
        if not records:
            return
        bars = [tqdm(total=len(records), desc=f"{desc}: {st.name}", unit=unit, leave=True) for st in stages]
        batches = [records[i : i + self.batch_size] for i in range(0, len(records), self.batch_size)]
        groups = _groups(stages)
        first_cpu = [] if groups[0][0] else groups.pop(0)[1]
        offset = len(first_cpu)

        def cpu_part(batch: list[Record]) -> list[Record]:
            out = _chain(first_cpu, batch)
            for bar in bars[:offset]:
                bar.update(len(batch))
            return out

        try:
            with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
                pending: deque[Future] = deque()
                it = iter(batches)
                for _ in range(max(1, self.workers) + 1):  # keep the decoders busy ahead of the model
                    self._submit(pool, pending, it, cpu_part)
                while pending:
                    batch = pending.popleft().result()
                    self._submit(pool, pending, it, cpu_part)
                    k = offset
                    for _, group in groups:
                        for st in group:
                            batch = st(batch)
                            bars[k].update(len(batch))
                            k += 1
                    yield from batch
        finally:
            for bar in bars:
                bar.close()

    @staticmethod
    def _submit(pool: ThreadPoolExecutor, pending: deque, it: Iterator, fn: Callable) -> None:
        batch = next(it, None)
        if batch is not None:
            pending.append(pool.submit(fn, batch))


# ----------------------------------------------------------------------------- Ray


def _to_rows(records: list[Record]) -> dict[str, list[bytes]]:
    return {"rec": [pickle.dumps(r, protocol=5) for r in records]}


def _from_rows(batch: dict[str, Any]) -> list[Record]:
    return [pickle.loads(b) for b in batch["rec"]]


class _TaskStage:
    """A CPU stage as a plain function over Ray Data batches."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[bytes]]:
        try:
            return _to_rows(_chain(self.stages, _from_rows(batch)))
        finally:
            for st in self.stages:  # a task owns nothing after it returns (e.g. probe workers)
                if hasattr(st, "close"):
                    st.close()


class _ActorStage:
    """A model stage in a Ray actor: the model loads once, in ``__init__``."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages
        for st in stages:
            st.setup()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[bytes]]:
        return _to_rows(_chain(self.stages, _from_rows(batch)))


class RayExecutor:
    """Ray Data execution of the same stages (``executor: ray``)."""

    def __init__(self, cfg: CurationConfig):
        self.cfg = cfg

    def _init(self) -> None:
        import ray

        if ray.is_initialized():
            return
        r = self.cfg.ray
        if r.address:
            ray.init(address=r.address)
        else:
            store = r.object_store_mb << 20 if r.object_store_mb else None
            ray.init(num_cpus=r.num_cpus, object_store_memory=store, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)

    def run(self, stages: list[Stage], records: list[Record], desc: str, unit: str = "clip") -> Iterator[Record]:
        """Yield output records as Ray finishes them (order not kept; callers sort)."""
        import ray.data

        if not records:
            return
        self._init()
        bs = self.cfg.batch_size
        rows = [{"rec": b} for b in _to_rows(records)["rec"]]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(records) // bs, 64)))
        for model, group in _groups(stages):
            if model:
                ds = ds.map_batches(_ActorStage, fn_constructor_args=(group,), batch_size=bs, batch_format="numpy",
                                    compute=ray.data.ActorPoolStrategy(size=self.cfg.ray.model_actors),
                                    num_gpus=self.cfg.ray.num_gpus or None)
            else:
                ds = ds.map_batches(_TaskStage(group), batch_size=bs, batch_format="numpy")
        with tqdm(total=len(records), desc=f"{desc} (ray)", unit=unit) as bar:
            for row in ds.iter_rows():
                bar.update(1)
                yield pickle.loads(row["rec"])


def make_executor(cfg: CurationConfig) -> LocalExecutor | RayExecutor:
    """The executor the config names."""
    from curation.workers import resolve_workers

    return RayExecutor(cfg) if cfg.executor == "ray" else LocalExecutor(cfg.batch_size, resolve_workers(cfg.workers))
