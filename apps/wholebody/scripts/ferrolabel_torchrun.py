"""ferrolabel's glue for bundle training under `torchrun -m monai.bundle run`.

The server (apps/src/train/torchrun.rs) runs

    python -m torch.distributed.run ... -m monai.bundle run \
        --config_file "[train.json, multi_gpu_train.json, <override.json>]"

with this folder on PYTHONPATH. The per-run override (written by the server) refers to the
objects below by their dotted names:

* ``ferrolabel_torchrun.start(progress_file)`` in ``initialize``, on every rank: records the
  rank and its pid in the progress file and starts a watchdog thread that ends the rank when
  its parent (the torchrun agent) is gone, so a killed agent never leaves ranks behind
  (torchrun starts each rank in a session of its own).
* ``Progress``: an ignite handler on rank 0's trainer (it replaces the bundle's
  TensorBoardStatsHandler, which ranks > 0 drop) that appends one JSON line per event to the
  progress file, in the shape of ferrolabel's own trainer (``TrainEvent``: started, iteration,
  epoch, checkpoint) and a last ``{"finished": ...}`` line. The server tails that file.
* ``FinalValidation``: an ignite handler on every rank's trainer that validates after the
  last epoch when the bundle's ``ValidationHandler`` (every ``val_interval`` epochs) did not,
  as ferrolabel's own trainer does (otherwise a short run would never save a checkpoint).
* ``load_weights(network, path)``: loads a bare or ``{"model": ...}`` state_dict strictly.

Only the standard library, torch and ignite are used.
"""

import json
import math
import os
import threading
import time

__all__ = ["start", "Progress", "FinalValidation", "load_weights"]


def _append(path, obj):
    """Appends one JSON line with a single write (O_APPEND: lines of several ranks never mix)."""
    line = (json.dumps(_finite(obj)) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _finite(obj):
    """``obj`` with NaN and infinities as null (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _watch_parent(ppid):
    while True:
        if os.getppid() != ppid:
            os._exit(3)
        time.sleep(0.2)


def start(progress_file):
    """Records this rank in ``progress_file`` and ends it once its parent is gone."""
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    _append(
        progress_file,
        {
            "rank": int(os.environ.get("RANK", "0")),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
            "pid": os.getpid(),
            "host": os.uname().nodename,
        },
    )
    return True


def load_weights(network, path):
    """Loads the checkpoint at ``path`` (a bare state_dict or ``{"model": state_dict}``) into
    ``network`` strictly, on the CPU; answers ``network``."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and set(state) == {"model"}:
        state = state["model"]
    network.load_state_dict(state, strict=True)
    return network


def _number(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _loss(output):
    if isinstance(output, (list, tuple)):
        output = output[0] if output else {}
    if isinstance(output, dict):
        return _number(output.get("loss"))
    return None


class FinalValidation:
    """Runs ``validator`` after the last epoch unless the epoch was a multiple of ``interval``
    (attached on every rank: validation is collective under DistributedDataParallel)."""

    def __init__(self, validator, interval):
        self.validator = validator
        self.interval = int(interval)

    def attach(self, engine):
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine):
        epoch = engine.state.epoch
        if epoch == engine.state.max_epochs and epoch % self.interval != 0:
            self.validator.run(epoch)


class Progress:
    """Rank 0's progress as JSON lines in ``progress_file`` (see the module's docstring)."""

    def __init__(self, progress_file, evaluator, network, train_pairs, val_pairs, checkpoint):
        self.path = progress_file
        self.evaluator = evaluator
        self.network = network
        self.train_pairs = int(train_pairs)
        self.val_pairs = int(val_pairs)
        self.checkpoint = checkpoint
        self.losses = []
        self.epoch_t0 = 0.0
        self.iter_t0 = 0.0
        self.validated = None
        self.best = (None, None)

    def attach(self, engine):
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        self.evaluator.add_event_handler(Events.COMPLETED, self._validated)

    def _started(self, engine):
        params = sum(p.numel() for p in self.network.parameters() if p.requires_grad)
        _append(
            self.path,
            {
                "event": "started",
                "train": self.train_pairs,
                "val": self.val_pairs,
                "iterations_per_epoch": int(engine.state.epoch_length or 0),
                "parameters": int(params),
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            },
        )

    def _epoch_started(self, engine):
        self.losses = []
        self.epoch_t0 = time.perf_counter()

    def _iteration_started(self, engine):
        self.iter_t0 = time.perf_counter()

    def _iteration(self, engine):
        loss = _loss(engine.state.output)
        if loss is not None:
            self.losses.append(loss)
        _append(
            self.path,
            {
                "event": "iteration",
                "epoch": int(engine.state.epoch),
                "iteration": int((engine.state.iteration - 1) % engine.state.epoch_length + 1),
                "loss": loss if loss is not None else float("nan"),
                "seconds": time.perf_counter() - self.iter_t0,
            },
        )

    def _validated(self, evaluator):
        state = evaluator.state
        metric = _number(state.metrics.get(state.key_metric_name)) if state.key_metric_name else None
        self.validated = (int(state.epoch), metric)

    def _epoch(self, engine):
        epoch = int(engine.state.epoch)
        val = self.validated[1] if self.validated and self.validated[0] == epoch else None
        if val is not None and (self.best[0] is None or val > self.best[0]):
            self.best = (val, epoch)
            # the bundle's CheckpointSaver wrote it during the validation (strictly better)
            _append(
                self.path,
                {"event": "checkpoint", "epoch": epoch, "metric": val, "path": self.checkpoint},
            )
        loss = sum(self.losses) / len(self.losses) if self.losses else float("nan")
        _append(
            self.path,
            {
                "event": "epoch",
                "epoch": epoch,
                "loss": loss,
                "val_dice": val,
                "best_metric": self.best[0],
                "best_epoch": self.best[1],
                "seconds": time.perf_counter() - self.epoch_t0,
            },
        )

    def _completed(self, engine):
        _append(
            self.path,
            {
                "finished": {
                    "epochs": int(engine.state.epoch),
                    "stopped": False,
                    "best_metric": self.best[0],
                    "best_epoch": self.best[1],
                    "validated_on_holdout": self.val_pairs > 0,
                }
            },
        )
