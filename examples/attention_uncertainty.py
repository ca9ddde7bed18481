"""Per-user attention uncertainty from posterior predictive draws, as a figure.

    python examples/attention_uncertainty.py --run runs/prior_study/lognormal-learned__lognormal \
        --user 414 --item 2571 --out docs/figures/attention_user414.png

``--user``/``--item`` are original ids (MovieLens userId/movieId). The figure shows the median
and 90 % interval of each attention weight over the user's history (user side, and item side
for the target), labelled by movie title when movies.csv is beside the ratings; the script
also prints how the mean relative interval width varies across ``--users`` random users
(with a fixed guide sigma it hardly can; with ``guide_spread = "learned"`` it may).
"""

from __future__ import annotations

import argparse

import numpy as np

from pyro_bamf import views
from pyro_bamf.diagnostics import interval_widths
from pyro_bamf.runs import explain_user, load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory written by pyro-bamf train")
    parser.add_argument("--user", required=True, help="original user id")
    parser.add_argument("--item", help="original id of a target item")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--top", type=int, default=20, help="history items shown")
    parser.add_argument("--users", type=int, default=100, help="users for the width spread")
    parser.add_argument("--out", default="attention.png", help=".png or .svg")
    parser.add_argument("--recommend-out", help="also draw the score intervals of the top 10")
    args = parser.parse_args()

    views.check_figure_path(args.out)
    rec = load_run(args.run)
    samples, figure, labels = explain_user(rec, args.user, args.item, args.samples, args.top)
    views.save(figure, args.out)
    print(f"wrote {args.out}")
    if args.recommend_out:
        items, _ = rec.recommend(samples.user, k=10)
        draws = rec.score_samples(samples.user, items, 200)
        # P(in the top 10 among every unseen item), for the ten listed
        ranked, probability = rec.topk_probability(samples.user, k=10, num_samples=200)
        p_top = dict(zip(ranked.tolist(), probability, strict=True))
        listed = np.array([p_top[item] for item in items.tolist()])
        figure = views.plot_score_intervals(items, draws, listed, labels, k=10)
        views.save(figure, args.recommend_out)
        print(f"wrote {args.recommend_out}")
    table = samples.summary().head(args.top)
    table["item"] = [labels[int(i)] for i in table["item"]]
    print(table.to_string(index=False))
    if samples.probabilities is not None:
        low, high = np.quantile(samples.probabilities, [0.05, 0.95])
        print(f"P(user {args.user} likes item {args.item}): 90 % interval [{low:.4f}, {high:.4f}]")

    with_history = np.flatnonzero(rec.split.history_lengths > 0)
    count = min(args.users, with_history.size)
    chosen = np.random.default_rng(0).choice(with_history, count, replace=False)
    relative = interval_widths(rec.model, rec.split, chosen, 200)["relative"]
    print(
        f"mean relative 90 % width across {count} users: mean {relative.mean():.4f}, "
        f"sd {relative.std():.4f}, min {relative.min():.4f}, max {relative.max():.4f}"
    )


if __name__ == "__main__":
    main()
