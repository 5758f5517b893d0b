#!/usr/bin/env python3
# Usage: scripts/beta-params.py runs/setups/beta-gamma-norm/seed-1/checkpoint.safetensors (needs numpy, safetensors)
# How far the first layer's Beta parameters moved from their start, from a checkpoint.
import sys, json, numpy as np
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
a = np.exp(t['enc0.alpha_unconstrained'].astype(np.float64)); b = np.exp(t['enc0.beta_unconstrained'].astype(np.float64))
m = a / (a + b)
filt = m.reshape(8, 27)
# mean correlation between the 8 filters' mean kernels (1 = identical shapes)
c = np.corrcoef(filt); off = c[~np.eye(8, dtype=bool)]
print(json.dumps(dict(alpha=[a.mean(), a.std()], beta=[b.mean(), b.std()], mean=[m.mean(), m.std()],
                      concentration=[(a + b).mean(), (a + b).std()], filter_correlation_mean=off.mean(),
                      gamma=t.get('enc0.after_positive.gamma', np.array([])).tolist()), indent=1))
