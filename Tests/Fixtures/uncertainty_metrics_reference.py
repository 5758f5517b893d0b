#!/usr/bin/env python3
"""Test oracle for the field's uncertainty metrics: ports of QU-BraTS and Shifts used only to check Flipout3D.

QU-BraTS: RagMeh11/QU-BraTS BraTS_Seg_Uncertainty.py (dice_metric, ftp_ratio_metric,
ftn_ratio_metric, make, and the AUC of `evaluate` with return_auc), one binary region per call.
nDSC: Shifts-Project/shifts mswml/metrics.py (dice_norm_metric, ndsc_aac_metric), with the
sort made stable (np.argsort(kind="stable")) and the retention curve calling dice_norm_metric
directly (the original indexes its float result with [0]).
Failure detection: AUROC by all pairs, AURC as the mean risk of the k most certain cases.
sklearn.metrics.auc is replaced by the same trapezoid (numpy only). nDSC keeps the original's
float32 sums, so it agrees with Flipout3D's exact counts to about 1e-7.

Usage: uncertainty_metrics_reference.py SPEC.json
SPEC: {"shape": [D, H, W], "points": 40, "cases": [{"truth": "t.u8", "prediction": "p.u8",
       "uncertainty": "u.f32", "mask": "m.u8"}, ...],
       "failure": {"dice": [...], "scores": [[...], ...] (null = +inf), "threshold": 0.5}}
Prints {"cases": [{"dice": [...], "ftp": [...], "ftn": [...], "dice_auc", "ftp_auc", "ftn_auc",
        "ndsc", "ndsc_curve": [...], "ndsc_aac"}], "failure": [{"auroc", "aurc", "eaurc", "curve"}]}.
"""
import json
import sys

import numpy as np

EPS = np.finfo(np.float32).eps


def sk_auc(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx = np.diff(x)
    direction = 1
    if np.any(dx < 0):
        assert np.all(dx <= 0)
        direction = -1
    return direction * float(np.sum(dx * (y[1:] + y[:-1]) / 2.0))


def dice_metric(ground_truth, predictions):
    ground_truth = ground_truth.astype("float32")
    predictions = predictions.astype("float32")
    intersection = np.sum(predictions * ground_truth)
    union = np.sum(predictions) + np.sum(ground_truth)
    if intersection == 0.0 and union == 0.0:
        return 1.0
    return float((2.0 * intersection) / union)


def ftp_ratio_metric(ground_truth, predictions, unc_mask, brain_mask):
    tp = (predictions.astype("float32") * ground_truth.astype("float32")) * brain_mask.astype("float32")
    before = tp.sum()
    after = (tp * unc_mask.astype("float32")).sum()
    return float((before - after) / (before + EPS))


def ftn_ratio_metric(ground_truth, predictions, unc_mask, brain_mask):
    tn = ((1 - predictions.astype("float32")) * (1 - ground_truth.astype("float32"))) * brain_mask.astype("float32")
    before = tn.sum()
    after = (tn * unc_mask.astype("float32")).sum()
    return float((before - after) / (before + EPS))


def make(ground_truth, predictions, uncertainties, brain_mask, thresholds):
    dice, ftp, ftn = [], [], []
    for th in thresholds:
        unc_mask = np.ones_like(uncertainties, dtype="float32")
        unc_mask[uncertainties > th] = 0.0
        dice.append(dice_metric(ground_truth * unc_mask, predictions * unc_mask))
        ftp.append(ftp_ratio_metric(ground_truth, predictions, unc_mask, brain_mask))
        ftn.append(ftn_ratio_metric(ground_truth, predictions, unc_mask, brain_mask))
    return dice, ftp, ftn


def dice_norm_metric(ground_truth, predictions):
    r = 0.001
    gt = ground_truth.astype("float32")
    seg = predictions.astype("float32")
    im_sum = np.sum(seg) + np.sum(gt)
    if im_sum == 0:
        return 1.0
    if np.sum(gt) == 0:
        k = 1.0
    else:
        k = (1 - r) * np.sum(gt) / (r * (len(gt.flatten()) - np.sum(gt)))
    tp = np.sum(seg[gt == 1])
    fp = np.sum(seg[gt == 0])
    fn = np.sum(gt[seg == 0])
    return float(2.0 * tp / (k * fp + 2.0 * tp + fn))


def ndsc_aac_metric(ground_truth, predictions, uncertainties):
    ordering = uncertainties.argsort(kind="stable")
    gts = ground_truth[ordering].copy()
    preds = predictions[ordering].copy()
    n = len(gts)
    fracs = np.log(np.arange(200 + 1)[1:])
    fracs /= np.amax(fracs)
    scores = []
    for frac in fracs:
        pos = int(n * frac)
        curr = preds if pos == n else np.concatenate((preds[:pos], gts[pos:]))
        scores.append(dice_norm_metric(gts, curr))
    return scores, 1.0 - sk_auc(fracs, scores)


def auroc(scores, positives):
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    if not pos or not neg:
        return None
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def aurc(risk, score):
    order = sorted(range(len(risk)), key=lambda i: (score[i], i))
    curve = [float(np.mean([risk[j] for j in order[: k + 1]])) for k in range(len(order))]
    return curve, float(np.mean(curve))


spec = json.load(open(sys.argv[1]))
points = spec["points"]
# The script's np.arange(0.0, 100.0 + EPS, ...) includes 100 under numpy 1 (float64 sum); under
# numpy 2 the float32 EPS makes 100.0 + EPS == 100.0 in float32 and drops it. Keep the intent: 41 points.
thresholds = np.arange(0.0, 100.0 + float(EPS), 100.0 / points).tolist()
thresholds.reverse()
out = {"cases": [], "failure": []}
for c in spec["cases"]:
    t = np.fromfile(c["truth"], dtype=np.uint8).astype(np.float64)
    p = np.fromfile(c["prediction"], dtype=np.uint8).astype(np.float64)
    u = np.fromfile(c["uncertainty"], dtype=np.float32).astype(np.float64)
    m = np.fromfile(c["mask"], dtype=np.uint8).astype(np.float64)
    dice, ftp, ftn = make(t, p, u, m, thresholds)
    curve, aac = ndsc_aac_metric(t, p, u)
    out["cases"].append({"dice": dice, "ftp": ftp, "ftn": ftn,
                         "dice_auc": sk_auc(thresholds, dice) / 100.0, "ftp_auc": sk_auc(thresholds, ftp) / 100.0,
                         "ftn_auc": sk_auc(thresholds, ftn) / 100.0,
                         "ndsc": dice_norm_metric(t, p), "ndsc_curve": curve, "ndsc_aac": aac})
f = spec["failure"]
risk = [1.0 - d for d in f["dice"]]
failed = [d < f["threshold"] for d in f["dice"]]
_, ideal = aurc(risk, risk)
for s in f["scores"]:
    s = [float("inf") if v is None else v for v in s]
    curve, a = aurc(risk, s)
    out["failure"].append({"auroc": auroc(s, failed), "aurc": a, "eaurc": a - ideal, "curve": curve})
print(json.dumps(out))
