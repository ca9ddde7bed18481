"""Planted-attention data: what each user holds, determinism, the spec parser, and the anchor
recovery measure on hand-set attention."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_bamf import BAMFRecommender
from pyro_bamf.config import BAMFConfig
from pyro_bamf.data import DataError, ImplicitSplit, load_data, make_planted, planted_anchors
from pyro_bamf.diagnostics import anchor_recovery

PAPER = Path(__file__).parents[1] / "examples" / "configs" / "pointwise_concat.toml"
SIZES = dict(n_users=40, n_items=120, n_anchors=10, anchors_per_user=2, followers_per_anchor=3)


def test_each_user_holds_anchors_their_followers_and_noise():
    data = make_planted(**SIZES, noise=5, seed=3)
    parent = planted_anchors(SIZES["n_items"], SIZES["n_anchors"], seed=3)
    assert (parent[:10] == -1).all() and np.bincount(parent[10:]).tolist() == [11] * 10
    assert data.user_counts().tolist() == [2 * (1 + 3) + 5] * 40
    for user in range(40):
        items = data.items[data.users == user]
        anchors = items[parent[items] < 0]
        followers = items[parent[items] >= 0]
        assert anchors.size == 2
        driven = np.isin(parent[followers], anchors)
        assert np.bincount(parent[followers[driven]], minlength=10)[anchors].tolist() == [3, 3]
        assert (~driven).sum() == 5


def test_same_seed_same_data_and_the_spec_names_it():
    a = make_planted(**SIZES, noise=4, seed=1)
    assert a.fingerprint() == make_planted(**SIZES, noise=4, seed=1).fingerprint()
    assert a.fingerprint() != make_planted(**SIZES, noise=4, seed=2).fingerprint()
    spec = "planted:n_users=40,n_items=120,n_anchors=10,anchors_per_user=2,"
    spec += "followers_per_anchor=3,noise=4,seed=1"
    assert load_data(spec).fingerprint() == a.fingerprint()
    with pytest.raises(DataError, match="unknown planted option 'anchors'; valid keys: n_users"):
        load_data("planted:anchors=3")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(n_anchors=2, anchors_per_user=2), "must exceed anchors_per_user"),
        (dict(n_items=30), "must leave each anchor more than"),
        (dict(noise=200), "noise=200 exceeds the 88 followers of other anchors"),
        (dict(seed=-1), "non-negative integer"),
        (dict(followers_per_anchor=0), "followers_per_anchor >= 1"),
    ],
)
def test_impossible_sizes_are_refused(changes, message):
    with pytest.raises(DataError, match=message):
        make_planted(**{**SIZES, "noise": 5, **changes})


class SetAttention(torch.nn.Module):
    """A stand-in model whose item-side psi is ``bump`` at each target's anchor, else 0."""

    def __init__(self, parent: np.ndarray, bump: float) -> None:
        super().__init__()
        self.parent, self.bump = torch.as_tensor(parent), bump
        self.config = BAMFConfig(embedding_dim=4)

    def attention_logits(self, batch):
        anchors = self.parent[batch.items]  # (G, S)
        psi = self.bump * (batch.history.unsqueeze(-2) == anchors.unsqueeze(-1)).float()
        return psi[:, :1], psi


@pytest.fixture(scope="module")
def planted_split():
    data = make_planted(**SIZES, noise=5, seed=0)
    return ImplicitSplit.from_interactions(data, seed=0), planted_anchors(120, 10, 0)


def test_anchor_recovery_of_attention_on_the_anchor_and_of_uniform_attention(planted_split):
    split, parent = planted_split
    found = anchor_recovery(SetAttention(parent, 1.0), split, parent)
    lengths = []
    for user, item in zip(split.test.users, split.test.items, strict=True):
        history = split.history_items[user, : split.history_lengths[user]]
        if parent[item] >= 0 and parent[item] in history:
            lengths.append(len(history))
    lengths = np.array(lengths, dtype=float)
    assert found["n"] == lengths.size > 10
    assert found["top1"] == 1.0 and found["rank_share"] == 0.0
    assert found["top1_chance"] == pytest.approx(np.mean(1 / lengths))
    weight = lengths * math.e / (math.e + lengths - 1)  # n * softmax at the bump
    assert found["anchor_weight"] == pytest.approx(weight.mean())
    flat = anchor_recovery(SetAttention(parent, 0.0), split, parent)
    assert flat["top1"] == 0.0 and flat["rank_share"] == 1.0  # ties rank the anchor last
    assert flat["anchor_weight"] == pytest.approx(1.0)
    below = anchor_recovery(SetAttention(parent, -1.0), split, parent)
    assert below["rank_share"] == 1.0 and below["anchor_weight"] < 1.0


def test_anchor_recovery_refuses_a_part_without_anchored_targets(planted_split):
    split, parent = planted_split
    with pytest.raises(ValueError, match="no positive of 'test' has its planted anchor"):
        anchor_recovery(SetAttention(parent, 1.0), split, np.full_like(parent, -1))


def test_bamf_with_normalised_attention_inputs_finds_the_planted_anchors():
    """The paper's configuration with normalised attention inputs and the ``prod`` score,
    trained for 5 epochs on the default planted data: the item-side attention ranks most
    targets' anchors first (chance 1/13) and gives them over twice the uniform weight."""
    data = make_planted(seed=1)
    split = ImplicitSplit.from_interactions(data, seed=1)
    parent = planted_anchors(300, 30, seed=1)
    config = BAMFConfig.from_toml(PAPER).replace(
        data="planted:seed=1", score_fn="prod", attention_inputs="normalised", lr=3e-3,
        max_epochs=5,
        warmup_epochs=5, compile_eval=False, retain_freed_memory=False, seed=1,
    )  # fmt: skip
    rec = BAMFRecommender(config)
    rec.fit(split, progress=False)
    found = anchor_recovery(rec.model, split, parent)
    assert found["n"] > 500
    assert found["top1"] > 5 * found["top1_chance"]
    assert found["anchor_weight"] > 2.0
