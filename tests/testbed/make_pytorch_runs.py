#!/usr/bin/env python3
"""Writes TensorBoard event files with PyTorch's own writer,
`torch.utils.tensorboard.SummaryWriter`. Not part of the test suite (torch
and its CUDA libraries are about 3 GB); a check to run by hand:

    python3 -m venv target/pytorch-venv
    target/pytorch-venv/bin/pip install -r tests/testbed/requirements-pytorch.txt
    target/pytorch-venv/bin/python tests/testbed/make_pytorch_runs.py --out target/tb-pytorch
    runport export tensorboard:target/tb-pytorch -o target/tb-pytorch-out
    target/testbed-venv/bin/python tests/testbed/tensorboard_reference.py compare \\
        target/tb-pytorch target/tb-pytorch-out

Runs (folders under OUT):
  scalars          add_scalar (NaN, +-inf), add_scalars (one folder per
                   series: scalars/multi_a, scalars/multi_b), and
                   add_scalar(new_style=True) (a 0-d tensor)
  media            add_image, add_histogram, add_text, add_audio at 4 steps
  hparams/<time>   add_hparams: hyperparameters and one metric (the writer
                   makes the sub-folder, named by the time)
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from out_dir import out_dir  # this folder

STEPS = 30


def main(argv=None) -> int:
    out = out_dir(__doc__, argv)
    torch.manual_seed(5)

    w = SummaryWriter(str(out / "scalars"))
    special = {3: float("nan"), 4: float("inf"), 5: float("-inf")}
    for step in range(STEPS):
        w.add_scalar("train/loss", special.get(step, 1.0 / (step + 1)), step)
        w.add_scalar("train/loss_tensor", torch.tensor(0.5 * step), step, new_style=True)
        w.add_scalars("multi", {"a": step * 0.1, "b": -step * 0.1}, step)
    w.close()

    w = SummaryWriter(str(out / "media"))
    for step in range(0, 20, 5):
        w.add_image("img", torch.rand(3, 8, 6), step)
        w.add_histogram("weights", torch.randn(100), step)
        w.add_text("note", f"step {step}", step)
        w.add_audio("tone", torch.sin(torch.linspace(0, 20, 800)).unsqueeze(0), step, sample_rate=8000)
    w.close()

    w = SummaryWriter(str(out / "hparams"))
    w.add_hparams({"lr": 0.01, "optimizer": "adam", "layers": 3, "bn": True}, {"hparam/accuracy": 0.9})
    w.close()

    print(json.dumps({"torch": torch.__version__, "numpy": np.__version__,
                      "runs": sorted(str(p.parent.relative_to(out)) for p in out.rglob("events.out.tfevents.*"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
