"""BAMFRecommender: checkpoints, id validation, scoring and recommendations."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from pyro_bamf.config import BAMFConfig
from pyro_bamf.data import ImplicitSplit, make_synthetic
from pyro_bamf.evaluation import full_ranking_blocks, full_ranking_candidates, score_candidates
from pyro_bamf.metrics import ranking_metrics
from pyro_bamf.recommender import BAMFRecommender, CheckpointError

CONFIG = BAMFConfig(
    data="synthetic", seed=0, embedding_dim=8, max_history=15, lr=1e-2, max_epochs=2
)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=40, n_items=100, rank=3, mean_interactions=14, seed=0)


@pytest.fixture(scope="module")
def split(data) -> ImplicitSplit:
    return ImplicitSplit.from_interactions(data, seed=0, max_history=CONFIG.max_history)


@pytest.fixture(scope="module")
def fitted(split) -> BAMFRecommender:
    recommender = BAMFRecommender(CONFIG)
    recommender.fit(split, progress=False)
    return recommender


@pytest.fixture(scope="module")
def checkpoint(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    fitted.save(path)
    return path


def all_pairs(split):
    users = np.repeat(np.arange(split.n_users), split.n_items)
    items = np.tile(np.arange(split.n_items), split.n_users)
    return users, items


def test_save_then_load_reproduces_identical_scores(fitted, split, checkpoint):
    loaded = BAMFRecommender.load(checkpoint, split)
    assert loaded.config == fitted.config
    users, items = all_pairs(split)
    before = fitted.score(users, items)
    after = loaded.score(users, items)
    np.testing.assert_array_equal(after, before)
    assert np.unique(before).size > 100  # the model does discriminate
    for key, value in fitted.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert loaded.evaluate() == fitted.evaluate()


def test_save_leaves_no_temporary_files(fitted, tmp_path):
    fitted.save(tmp_path / "sub" / "model.pt")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["model.pt"]


def test_load_with_another_split_raises_checkpoint_error_naming_the_fingerprint(data, checkpoint):
    other = ImplicitSplit.from_interactions(data, seed=1, max_history=CONFIG.max_history)
    with pytest.raises(CheckpointError, match="fingerprint"):
        BAMFRecommender.load(checkpoint, other)
    other_history = ImplicitSplit.from_interactions(data, seed=0, max_history=14)
    with pytest.raises(CheckpointError, match="fingerprint"):
        BAMFRecommender.load(checkpoint, other_history)


def test_truncated_checkpoint_raises_checkpoint_error(checkpoint, split, tmp_path):
    raw = checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        BAMFRecommender.load(truncated, split)


def test_garbage_empty_or_foreign_checkpoint_raises_checkpoint_error(split, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (garbage, empty):
        with pytest.raises(CheckpointError, match="unreadable or corrupt"):
            BAMFRecommender.load(path, split)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="format"):
        BAMFRecommender.load(foreign, split)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="format"):
        BAMFRecommender.load(tensor, split)
    with pytest.raises(CheckpointError, match="does not exist"):
        BAMFRecommender.load(tmp_path / "missing.pt", split)


def test_checkpoint_with_corrupted_bytes_raises_checkpoint_error(checkpoint, split, tmp_path):
    raw = bytearray(checkpoint.read_bytes())
    middle = len(raw) // 2  # inside the stored tensors
    raw[middle : middle + 64] = b"\xff" * 64
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(raw))
    assert zipfile.ZipFile(corrupt).testzip() is not None  # the archive's CRC does not match
    with pytest.raises(CheckpointError):
        BAMFRecommender.load(corrupt, split)


def test_checkpoint_of_another_catalogue_size_raises_checkpoint_error(fitted, split, tmp_path):
    path = tmp_path / "model.pt"
    fitted.save(path)
    payload = torch.load(path, weights_only=True)
    payload["n_items"] = split.n_items + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        BAMFRecommender.load(path, split)


@pytest.mark.parametrize(
    ("users", "items", "name", "index"),
    [
        ([0, 40], [1, 2], "user", "40"),
        ([0, -1], [1, 2], "user", "-1"),
        ([0, 1], [1, 100], "item", "100"),
        ([0, 1], [-3, 2], "item", "-3"),
    ],
)
def test_score_with_unknown_index_raises_value_error_naming_it(fitted, users, items, name, index):
    with pytest.raises(ValueError, match=rf"unknown {name} index \[{index}\]"):
        fitted.score(users, items)


def test_score_rejects_length_mismatch_and_unfitted_use(fitted):
    with pytest.raises(ValueError, match="differ in length"):
        fitted.score([0, 1], [1])
    with pytest.raises(RuntimeError, match="not fitted"):
        BAMFRecommender(CONFIG).score([0], [1])


def test_score_returns_probabilities_in_input_order(fitted, split):
    rng = np.random.default_rng(0)
    users = rng.integers(0, split.n_users, 50)  # unsorted, with repeats
    items = rng.integers(0, split.n_items, 50)
    scores = fitted.score(users, items)
    assert scores.dtype == np.float32 and scores.shape == (50,)
    assert np.all((scores > 0) & (scores < 1))
    one_by_one = np.array([fitted.score([u], [i])[0] for u, i in zip(users, items, strict=True)])
    np.testing.assert_allclose(scores, one_by_one, rtol=0, atol=1e-6)


@pytest.mark.parametrize("user", [0, 17, 39])
def test_recommend_returns_top_k_unseen_items_sorted_by_score(fitted, split, user):
    items, scores = fitted.recommend(user, k=10)
    assert items.shape == scores.shape == (10,)
    assert np.all(np.diff(scores) <= 0)
    seen = set(split.train.items[split.train.users == user].tolist())
    assert not seen & set(items.tolist())
    assert len(set(items.tolist())) == 10
    np.testing.assert_array_equal(scores, fitted.score(np.full(10, user), items))
    # nothing unseen scores higher than the last recommendation
    unseen = np.setdiff1d(np.arange(split.n_items), list(seen))
    all_scores = fitted.score(np.full(unseen.size, user), unseen)
    np.testing.assert_array_equal(np.sort(all_scores)[::-1][:10], scores)


def test_recommend_can_include_seen_items_and_validates_k(fitted, split):
    items, scores = fitted.recommend(0, k=split.n_items, exclude_seen=False)
    assert sorted(items.tolist()) == list(range(split.n_items))
    with pytest.raises(ValueError, match="k must be"):
        fitted.recommend(0, k=0)
    with pytest.raises(ValueError, match="unknown user index"):
        fitted.recommend(split.n_users, k=5)


def test_full_ranking_candidates_are_test_positives_among_never_seen_items(split):
    users, items, labels = full_ranking_candidates(split, "test")
    assert np.all(np.diff(users) >= 0)
    for user in range(split.n_users):
        rows = users == user
        other = np.concatenate(
            [getattr(split, part).items[getattr(split, part).users == user]
             for part in ("train", "val", "loo")]
        )  # fmt: skip
        np.testing.assert_array_equal(
            np.sort(items[rows]), np.setdiff1d(np.arange(split.n_items), other)
        )
        test = split.test.items[split.test.users == user]
        np.testing.assert_array_equal(np.sort(items[rows][labels[rows] == 1]), test)
    assert labels.sum() == len(split.test)


def test_evaluate_under_the_full_protocol_ranks_every_unseen_item(fitted, split):
    full = BAMFRecommender(fitted.config.replace(eval_protocol="full"))
    full.model, full.split = fitted.model, split
    metrics = full.evaluate(ks=(10,))
    users, items, labels = full_ranking_candidates(split, "test")
    scores = score_candidates(
        fitted.model, users, items, split.history_items, split.history_lengths
    )
    expected = ranking_metrics(users, labels, scores, ks=(10,))
    assert metrics == pytest.approx(expected, rel=1e-12)


def test_full_ranking_blocks_bound_their_rows_and_cover_every_candidate(split):
    max_rows = 3 * split.n_items
    blocks = list(full_ranking_blocks(split, "test", max_rows=max_rows))
    assert len(blocks) == -(-split.n_users // 3)
    assert all(len(users) <= max_rows for users, _, _ in blocks)
    joined = [np.concatenate(column) for column in zip(*blocks, strict=True)]
    for got, expected in zip(joined, full_ranking_candidates(split, "test"), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_full_protocol_in_small_blocks_gives_the_same_metrics(fitted, split, monkeypatch):
    import functools

    import pyro_bamf.protocols as protocols

    full = BAMFRecommender(fitted.config.replace(eval_protocol="full"))
    full.model, full.split = fitted.model, split
    whole = full.evaluate(ks=(5, 10))
    small = functools.partial(full_ranking_blocks, max_rows=4 * split.n_items)
    monkeypatch.setattr(protocols, "full_ranking_blocks", small)
    assert full.evaluate(ks=(5, 10)) == pytest.approx(whole, rel=1e-9)
