#!/usr/bin/env python3
"""Writes TensorBoard event files with TensorFlow itself (tf.summary, the
Keras TensorBoard callback and the hparams plugin's API), the writers most
TF and Keras training code uses. Runs in the venv of
requirements-tensorflow.txt.

    python make_tensorflow_runs.py --out DIR

Runs (folders under DIR):
  summaries        tf.summary.scalar (float32, with NaN and +-inf), text,
                   image, histogram and audio at 20 steps
  hparams/trial-0  hp.hparams(...) with 3 hyperparameters, and a metric;
  hparams/trial-1  the experiment's hp.hparams_config(...) in DIR/hparams
  hparams          (a run of its own, as TensorBoard shows it)
  keras/train      a small Keras model fitted for 4 epochs with
  keras/validation tf.keras.callbacks.TensorBoard(histogram_freq=1,
                   write_graph=True, update_freq="epoch")

DIR/scenarios.json records, per run, the tags written (known by
construction) with their step counts. Contents are deterministic (fixed
seeds) but for wall times and file names.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorboard.plugins.hparams import api as hp  # noqa: E402

from out_dir import out_dir  # noqa: E402  (this folder)

STEPS = 20


def summaries(out: Path) -> dict:
    w = tf.summary.create_file_writer(str(out / "summaries"))
    rng = np.random.default_rng(7)
    special = {3: float("nan"), 4: float("inf"), 5: float("-inf")}
    with w.as_default():
        for step in range(STEPS):
            tf.summary.scalar("loss", special.get(step, 1.0 / (step + 1)), step=step)
            tf.summary.scalar("lr", tf.constant(0.1 * 0.9**step, dtype=tf.float32), step=step)
            if step % 5 == 0:
                tf.summary.text("note", f"step {step}", step=step)
                img = rng.random((2, 8, 6, 3)).astype(np.float32)
                tf.summary.image("sample", img, step=step, max_outputs=2)
                tf.summary.histogram("weights", rng.normal(size=100), step=step, buckets=10)
                tone = np.sin(np.linspace(0, 20, 800)).astype(np.float32).reshape(1, 800, 1)
                tf.summary.audio("tone", tone, sample_rate=8000, step=step)
    w.close()
    return {"loss": STEPS, "lr": STEPS, "note": 4, "sample": 4, "weights": 4, "tone": 4}


def hparams(out: Path) -> dict:
    runs = {}
    with tf.summary.create_file_writer(str(out / "hparams")).as_default():
        hp.hparams_config(
            hparams=[hp.HParam("lr", hp.RealInterval(1e-4, 1e-1)), hp.HParam("units", hp.Discrete([16, 32])),
                     hp.HParam("optimizer", hp.Discrete(["adam", "sgd"]))],
            metrics=[hp.Metric("accuracy", display_name="Accuracy")],
        )
    runs["hparams"] = {}
    for i, (lr, units, opt) in enumerate([(0.01, 16, "adam"), (0.001, 32, "sgd")]):
        run = f"hparams/trial-{i}"
        with tf.summary.create_file_writer(str(out / run)).as_default():
            hp.hparams({"lr": lr, "units": units, "optimizer": opt}, trial_id=f"trial-{i}")
            for step in range(5):
                tf.summary.scalar("accuracy", 0.5 + 0.1 * step + 0.01 * i, step=step)
        runs[run] = {"accuracy": 5}
    return runs


def keras(out: Path) -> dict:
    tf.keras.utils.set_random_seed(3)
    x = np.random.default_rng(3).normal(size=(64, 4)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.float32)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(8, activation="relu"),
                                 tf.keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    cb = tf.keras.callbacks.TensorBoard(log_dir=str(out / "keras"), histogram_freq=1, write_graph=True,
                                        update_freq="epoch")
    model.fit(x, y, epochs=4, batch_size=16, validation_split=0.25, callbacks=[cb], verbose=0)
    return {"keras/train": {"epoch_loss": 4, "epoch_accuracy": 4},
            "keras/validation": {"epoch_loss": 4, "epoch_accuracy": 4}}


def main(argv=None) -> int:
    out = out_dir(__doc__, argv)
    runs = {"summaries": summaries(out)}
    runs.update(hparams(out))
    runs.update(keras(out))
    scenarios = {"writer": f"tensorflow {tf.__version__}", "runs": runs}
    (out / "scenarios.json").write_text(json.dumps(scenarios, indent=1, sort_keys=True))
    print(json.dumps({"runs": len(runs), "tensorflow": tf.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
