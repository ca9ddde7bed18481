"""Attention posteriors of trained models, for users chosen to show the contrast: a short and a
long history, and the most and the least certain.

    python examples/attention_figures.py --run "paper=runs/study/a_paper" \\
        --run "normalised=runs/study/f_normalised" --out docs/figures/attention_contrast.png

The users come from the last ``--run``: among ``--users`` random users with at least ``--min``
history items, the 10th and 90th percentile of history length, and the smallest and largest
mean relative 90 % interval width of the user-side weights (width / median). Each row is one
user, each column one run, with the same draws per panel (``--samples``).
"""

from __future__ import annotations

import argparse

import numpy as np

from pyro_bamf import views
from pyro_bamf.diagnostics import interval_widths
from pyro_bamf.runs import item_labels, load_run


def choose_users(rec, users: int, minimum: int, samples: int, seed: int) -> dict[str, int]:
    """``{why: user index}``: short and long history, most and least certain."""
    lengths = rec.split.history_lengths
    rng = np.random.default_rng(seed)
    pool = rng.permutation(np.flatnonzero(lengths >= minimum))[:users]
    if pool.size < 2:
        raise SystemExit(f"fewer than 2 users with at least {minimum} history items")
    order = pool[np.argsort(lengths[pool], kind="stable")]
    width = interval_widths(rec.model, rec.split, pool, samples)["relative"]
    return {
        "short history": int(order[len(order) // 10]),
        "long history": int(order[(9 * len(order)) // 10]),
        "most certain": int(pool[np.argmin(width)]),
        "least certain": int(pool[np.argmax(width)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--min", type=int, default=10, help="fewest history items of a user")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--top", type=int, default=10, help="history items shown per panel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="attention_contrast.png", help=".png or .svg")
    args = parser.parse_args()
    views.check_figure_path(args.out)
    if not all("=" in spec for spec in args.run):
        parser.error("--run takes NAME=DIR")
    runs = dict(spec.split("=", 1) for spec in args.run)
    recs = {name: load_run(path) for name, path in runs.items()}
    last = recs[list(recs)[-1]]
    if len({rec.split.fingerprint for rec in recs.values()}) > 1:
        parser.error("the runs were trained on different splits: their users do not match")
    chosen = choose_users(last, args.users, args.min, args.samples, args.seed)
    panels = []
    for why, user in chosen.items():
        row = []
        for name, rec in recs.items():
            draws = rec.attention_samples(user, None, args.samples)
            width = interval_widths(rec.model, rec.split, np.array([user]), args.samples)
            user_id = rec.split.data.user_ids[user]
            title = (f"{name}: user {user_id} ({why}, {draws.history.size} items), "
                     f"rel. width {width['relative'][0]:.2f}")  # fmt: skip
            row.append((title, draws))
            print(title)
        panels.append(row)
    views.save(views.plot_attention_grid(panels, item_labels(last), args.top), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
