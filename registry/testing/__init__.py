"""Helpers for tests, demos and benchmarks, shipped with tvreg (like ``zarr.testing``).

:mod:`tvreg.testing.toy` is a tiny, deterministic, real fine-tuning workload: a small
:class:`ToyClassifier`, synthetic token-classification :data:`TASKS`, :func:`pretrain` /
:func:`finetune` / :func:`accuracy`, :func:`save_safetensors`, and :func:`make_toy_zoo`, which
writes a base checkpoint and fine-tuned checkpoints (``.safetensors``) in about a second.
:mod:`tvreg.testing.crash` kills real ``tvreg`` processes at chosen steps and checks what they
leave (the crash-safety tests and benchmark). :mod:`tvreg.testing.store` is the contract every
:class:`tvreg.stores.Store` must meet, as pytest test classes (``StoreContract``) to subclass
for a store of your own; it needs pytest, so it is imported only by name, not from here.
"""

from tvreg.testing.toy import (
                               NUM_CLASSES,
                               SEQ_LEN,
                               TASKS,
                               VOCAB_SIZE,
                               ToyClassifier,
                               ToyZoo,
                               accuracy,
                               finetune,
                               make_dataset,
                               make_toy_zoo,
                               param_count,
                               pretrain,
                               save_safetensors,
)

__all__ = [
    "NUM_CLASSES",
    "SEQ_LEN",
    "TASKS",
    "VOCAB_SIZE",
    "ToyClassifier",
    "ToyZoo",
    "accuracy",
    "finetune",
    "make_dataset",
    "make_toy_zoo",
    "param_count",
    "pretrain",
    "save_safetensors",
]
