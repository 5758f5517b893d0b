#!/usr/bin/env python3
# Usage: scripts/mixture-kl.py runs/setups/mixture-normal/seed-3/checkpoint.safetensors (needs numpy, safetensors)
# MC KL of a trained K-component mixture posterior vs N(0, 1) prior, against the closed-form upper bound
# sum_j w_j KL(N_j || p) (joint convexity). Reads a checkpoint with safetensors/numpy.
import sys, json, numpy as np
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
rng = np.random.default_rng(0)
sp = lambda u: np.where(u > 20, u, np.log1p(np.exp(np.minimum(u, 20))))
tot_mc, tot_bound, draws = [], 0.0, 64
layers = sorted({k.split('.')[0] for k in t if '.loc[' in k and not k.startswith('adam')})
mc = np.zeros(draws)
info = {}
for L in layers:
    K = len([k for k in t if k.startswith(L + '.loc[')])
    logit = np.stack([t[f'{L}.logit[{j}]'] for j in range(K)]).astype(np.float64)
    loc = np.stack([t[f'{L}.loc[{j}]'] for j in range(K)]).astype(np.float64)
    sc = sp(np.stack([t[f'{L}.scale[{j}]_unconstrained'] for j in range(K)]).astype(np.float64))
    w = np.exp(logit - logit.max(0)); w /= w.sum(0)
    kl_j = np.log(1 / sc) + (sc**2 + loc**2) / 2 - 0.5
    tot_bound += (w * kl_j).sum()
    for d in range(draws):
        u = rng.random(loc.shape[1]); z = rng.standard_normal(loc.shape[1])
        comp = (u[None, :] > np.cumsum(w, 0)).sum(0).clip(0, K - 1)
        x = loc[comp, np.arange(loc.shape[1])] + sc[comp, np.arange(loc.shape[1])] * z
        lq = np.log((w * np.exp(-0.5 * ((x - loc) / sc) ** 2) / (sc * np.sqrt(2 * np.pi))).sum(0))
        lp = -0.5 * x**2 - 0.5 * np.log(2 * np.pi)
        mc[d] += (lq - lp).sum()
    info[L] = dict(weights=int(loc.shape[1]), max_weight_median=float(np.median(w.max(0))),
                   component_gap_over_scale_median=float(np.median(np.abs(loc[0] - loc[1]) / sc.mean(0))) if K > 1 else None)
scale = 1 / (48 * 32**3)
print(json.dumps(dict(mc_kl_mean=mc.mean(), mc_kl_sd_one_sample=mc.std(ddof=1), upper_bound=tot_bound,
                      scaled_mc_sd=mc.std(ddof=1) * scale, scaled_kl=mc.mean() * scale, layers=info), indent=1))
