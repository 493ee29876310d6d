#!/usr/bin/env python3
"""Logistic head, scikit-learn side: the same features, the same choice, then the refit.

Usage: reference.py OUT_DIR [--repeats R] [--tol T]

Reads OUT_DIR/features.safetensors (the MobileNetV2 features headstart extracted) and
OUT_DIR/selection.json (headstart's training/validation rows and folds for seed 0), then does
what a careful scikit-learn user does: StandardScaler + multinomial LogisticRegression (lbfgs),
C chosen along the same grid, strongest first, warm-started (warm_start=True), on the same
validation rows or the same folds (pooled out-of-fold accuracy, ties broken by log-loss), then
refit on every labelled example with the chosen strength, warm-started from the chosen solution
(the mean over folds). headstart's strength l2 on n examples is C = 1 / (l2 * n). Prints one
JSON line: the choice, the selection estimate, test accuracy, median fit time of R repeats.
"""
import argparse, json, time, warnings

import numpy as np
from safetensors.numpy import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

GRID = [1.0, 1e-1, 3e-2, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]  # strongest first, as headstart


def path(x, y, judge, tol, max_iter, start=None, grid=GRID):
    """Fits every strength in order, warm-started; returns (raw coef, raw intercept, judged probabilities)."""
    sc = StandardScaler().fit(x)
    z = sc.transform(x)
    zj = sc.transform(judge) if judge is not None else None
    m = LogisticRegression(solver="lbfgs", tol=tol, max_iter=max_iter, warm_start=True)
    if start is not None:  # raw-space solution → this standardisation
        w, b = start
        m.coef_, m.intercept_ = w * sc.scale_, b + w @ sc.mean_
        m.classes_ = np.arange(w.shape[0])
    out = []
    for l2 in grid:
        m.set_params(C=1.0 / (l2 * len(x)))
        m.fit(z, y)
        w = m.coef_ / sc.scale_
        b = m.intercept_ - w @ sc.mean_
        out.append((w, b, m.predict_proba(zj) if zj is not None else None))
    return out


def scores(p, y):
    acc = float((p.argmax(1) == y).mean())
    loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None)).mean())
    return acc, loss


def fit(x, y, sel, tol, max_iter):
    n_tr = sel["n_train"]
    if sel["method"] == "cross_validation":
        fold_of = np.array(sel["fold_of"])
        oof = [np.zeros((len(y), int(y.max()) + 1)) for _ in GRID]
        sols = [[] for _ in GRID]
        for f in range(sel["folds"]):
            fit_rows, held = fold_of != f, fold_of == f
            for i, (w, b, p) in enumerate(path(x[fit_rows], y[fit_rows], x[held], tol, max_iter)):
                oof[i][held] = p
                sols[i].append((w, b))
        judged = [scores(p, y) for p in oof]
    else:
        pts = path(x[:n_tr], y[:n_tr], x[n_tr:], tol, max_iter)
        judged = [scores(p, y[n_tr:]) for (_, _, p) in pts]
        sols = [[(w, b)] for (w, b, _) in pts]
    best = None
    for i, (acc, loss) in enumerate(judged):
        if best is None or acc > best[0] + 1e-12 or (abs(acc - best[0]) <= 1e-12 and loss < best[1]):
            best = (acc, loss, i)
    acc, loss, bi = best
    w0 = np.mean([s[0] for s in sols[bi]], axis=0)
    b0 = np.mean([s[1] for s in sols[bi]], axis=0)
    w, b, _ = path(x, y, None, tol, max_iter, start=(w0, b0), grid=[GRID[bi]])[0]
    return dict(l2=GRID[bi], estimate=acc, estimate_loss=loss, w=w, b=b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--max-iter", type=int, default=500)
    a = ap.parse_args()
    f = load_file(f"{a.out}/features.safetensors")
    sel = json.load(open(f"{a.out}/selection.json"))
    order = np.array(sel["order"])
    x, y = f["x_train"].astype(np.float64)[order], f["y_train"].astype(np.int64)[order]
    xt, yt = f["x_test"].astype(np.float64), f["y_test"].astype(np.int64)
    times, r = [], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for _ in range(a.repeats):
            t = time.perf_counter()
            r = fit(x, y, sel, a.tol, a.max_iter)
            times.append(time.perf_counter() - t)
    not_converged = sum(issubclass(c.category, ConvergenceWarning) for c in caught) // a.repeats
    test = float(((xt @ r["w"].T + r["b"]).argmax(1) == yt).mean())
    times.sort()
    print(json.dumps({"tool": "sklearn", "method": sel["method"], "folds": sel["folds"], "l2": r["l2"], "C_refit": 1.0 / (r["l2"] * len(y)),
                      "selection_estimate": r["estimate"], "test_accuracy": test, "fit_s": times[len(times) // 2], "fit_s_all": times,
                      "tol": a.tol, "max_iter": a.max_iter, "fits_not_converged": not_converged}))


if __name__ == "__main__":
    main()
