#!/usr/bin/env python3
"""tools/gen_optim_fixture.py -- PyTorch reference for nanochat's fused AdamW step.

Run from the repository root (needs pip `torch` or Debian `python3-torch`):

    python3 tools/gen_optim_fixture.py > spec/fixtures/adamw_torch.json

Two float32 parameters (a 3 x 4 matrix and a 5-vector) start from fixed values and take 6 steps
of torch.optim.AdamW (lr 1e-2 times a per-step schedule multiplier, betas (0.9, 0.95), eps 1e-8,
weight_decay 0.1) on fixed float32 gradients. The JSON holds the initial values, every step's
gradients and lr, and the parameters after every step; spec/optim/adamw_spec.lua replays the
same steps through nc.optim.adamw and compares.
"""
import json
import sys

import torch

torch.manual_seed(0)
shapes = {"w": (3, 4), "b": (5,)}
params = {k: torch.randn(*s, dtype=torch.float32) for k, s in shapes.items()}
init = {k: v.clone() for k, v in params.items()}
ps = [torch.nn.Parameter(params[k]) for k in ("w", "b")]
opt = torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
mults = [0.25, 0.5, 0.75, 1.0, 1.0, 0.5]
steps = []
for i, m in enumerate(mults):
    grads = {}
    for k, p in zip(("w", "b"), ps):
        g = torch.randn(*p.shape, dtype=torch.float32) * (10.0 ** (i % 3 - 1))
        p.grad = g
        grads[k] = g.flatten().tolist()
    for grp in opt.param_groups:
        grp["lr"] = 1e-2 * m
    opt.step()
    steps.append({"mult": m, "grads": grads,
                  "after": {k: p.detach().flatten().tolist() for k, p in zip(("w", "b"), ps)}})

out = {
    "generator": "tools/gen_optim_fixture.py",
    "torch": torch.__version__,
    "lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1,
    "shapes": {k: list(s) for k, s in shapes.items()},
    "init": {k: v.flatten().tolist() for k, v in init.items()},
    "steps": steps,
}
json.dump(out, sys.stdout, indent=1)
sys.stdout.write("\n")
