"""What every run shares: search and training (and tuning, which drives them) are built on it.

- :mod:`~bnas.run.context`: one process or many (device, process group, collectives, the
  BatchNorm buffer broadcast, rank 0 first);
- :mod:`~bnas.run.rundir`: the run directory and its log;
- :mod:`~bnas.run.rng`: seeding, per-epoch random streams, saved generator states;
- :mod:`~bnas.run.checkpoint`: one writer and loader of checkpoints (kind, format, atomic);
- :mod:`~bnas.run.schedules`: learning-rate schedules as functions of the position;
- :mod:`~bnas.run.metrics` and :mod:`~bnas.run.progress`: running metrics, metric files, the
  progress line;
- :mod:`~bnas.run.loop`: the epoch loop, with the hooks a run fills in (its step, its
  end-of-epoch records).

The optimizer of a run is its binarizer's (:meth:`bnas.binarize.Binarizer.optimizer`).
"""
