"""Interactions, from_frame and the generic table loader."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_bamf.data import DataError, Interactions, from_frame, load_table


def pairs(data: Interactions) -> set[tuple]:
    """The interactions as a set of (original user id, original item id)."""
    return set(
        zip(data.user_ids[data.users].tolist(), data.item_ids[data.items].tolist(), strict=True)
    )


def test_reindexes_in_sorted_order_of_original_ids():
    df = pd.DataFrame({"userId": [30, 10, 30, 20], "movieId": [7, 5, 5, 9]})
    data = from_frame(df, source="toy")
    assert data.user_ids.tolist() == [10, 20, 30]
    assert data.item_ids.tolist() == [5, 7, 9]
    assert data.users.dtype == np.int64 and data.items.dtype == np.int64
    assert data.users.tolist() == [0, 1, 2, 2]  # rows sorted by (user, item)
    assert data.items.tolist() == [0, 2, 0, 1]
    assert (data.n_users, data.n_items, data.n_interactions, len(data)) == (3, 3, 4, 4)
    assert data.source == "toy"
    assert pairs(data) == {(30, 7), (10, 5), (30, 5), (20, 9)}


def test_string_ids_and_index_lookup():
    df = pd.DataFrame({"u": ["bob", "al", "bob", "cy"], "i": ["x9", "x10", "x10", "x9"]})
    data = from_frame(df, "u", "i")
    assert data.user_ids.tolist() == ["al", "bob", "cy"]
    assert data.item_ids.tolist() == ["x10", "x9"]
    assert data.user_index(["cy", "al"]).tolist() == [2, 0]
    assert data.item_index("x9").tolist() == [1]
    assert pairs(data) == {("bob", "x9"), ("al", "x10"), ("bob", "x10"), ("cy", "x9")}


def test_unknown_ids_are_named():
    data = from_frame(pd.DataFrame({"userId": [1, 2], "movieId": [3, 4]}))
    with pytest.raises(DataError, match=r"2 unknown user id\(s\): 7, 9"):
        data.user_index([1, 7, 9])
    with pytest.raises(DataError, match=r"1 unknown item id\(s\): 5"):
        data.item_index([5])


def test_describe():
    df = pd.DataFrame({"userId": [1, 1, 1, 2], "movieId": [1, 2, 3, 1]})
    assert from_frame(df).describe() == {
        "n_users": 2,
        "n_items": 3,
        "n_interactions": 4,
        "density": pytest.approx(4 / 6),
        "max_user_interactions": 3,
        "mean_user_interactions": 2.0,
    }


def test_fingerprint_is_stable_and_order_free():
    df = pd.DataFrame({"userId": [1, 1, 2], "movieId": [1, 2, 1]})
    data = from_frame(df)
    assert data.fingerprint() == from_frame(df.iloc[::-1]).fingerprint()
    # A literal digest: changing how fingerprints are computed invalidates cached candidates.
    assert data.fingerprint() == "8433b70142ff5dc55c885cd4ba96015d7b474000bf99244d781be1845464c65f"
    other = from_frame(pd.DataFrame({"userId": [1, 1, 2], "movieId": [1, 2, 2]}))
    assert other.fingerprint() != data.fingerprint()


def test_arrays_are_read_only():
    data = from_frame(pd.DataFrame({"userId": [1, 2], "movieId": [3, 4]}))
    with pytest.raises(ValueError, match="read-only"):
        data.users[0] = 1


def test_duplicates_are_removed_with_a_count():
    df = pd.DataFrame({"userId": [1, 1, 1, 2, 2], "movieId": [5, 5, 5, 6, 7]})
    with pytest.warns(UserWarning, match="removed 2 duplicate"):
        data = from_frame(df)
    assert data.n_interactions == 3


def test_no_warning_without_duplicates():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_frame(pd.DataFrame({"userId": [1, 2], "movieId": [3, 3]}))


def test_missing_columns_are_named_with_the_available_ones():
    df = pd.DataFrame({"user": [1], "movieId": [2], "rating": [4.0]})
    with pytest.raises(
        DataError, match=r"missing column\(s\) 'userId'.*available: 'user', 'movieId', 'rating'"
    ):
        from_frame(df)


def test_empty_table():
    with pytest.raises(DataError, match="empty"):
        from_frame(pd.DataFrame({"userId": [], "movieId": []}))


def test_nan_ids_are_counted():
    df = pd.DataFrame({"userId": [1, None, None, 4], "movieId": [1, 2, 3, 4]})
    with pytest.raises(DataError, match=r"2 row\(s\) have a missing id in column 'userId'"):
        from_frame(df)


def test_constructor_rejects_bad_indices_and_duplicates():
    ids = np.arange(3)
    with pytest.raises(DataError, match="outside"):
        Interactions(np.array([0, 3]), np.array([0, 1]), ids, ids)
    with pytest.raises(DataError, match="duplicate"):
        Interactions(np.array([1, 1]), np.array([2, 2]), ids, ids)
    with pytest.raises(DataError, match="differ in length"):
        Interactions(np.array([1]), np.array([2, 2]), ids, ids)


def test_constructor_sorts_rows():
    ids = np.arange(3)
    data = Interactions(np.array([2, 0, 2]), np.array([1, 2, 0]), ids, ids)
    assert data.users.tolist() == [0, 2, 2] and data.items.tolist() == [2, 0, 1]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-5, 30), st.sampled_from("abcdefg")), min_size=1, max_size=60)
)
def test_from_frame_keeps_exactly_the_distinct_pairs(rows):
    df = pd.DataFrame(rows, columns=["userId", "movieId"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = from_frame(df)
    assert pairs(data) == set(rows)
    assert np.all(np.diff(data.users * data.n_items + data.items) > 0)
    assert data.user_ids.tolist() == sorted({u for u, _ in rows})
    assert np.array_equal(np.unique(data.users), np.arange(data.n_users))


def test_load_csv_with_string_ids(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("userId,movieId,extra\nann,m2,1\nbo,m1,2\nann,m1,3\n")
    data = load_table(path)
    assert pairs(data) == {("ann", "m2"), ("bo", "m1"), ("ann", "m1")}
    assert data.source == str(path)


def test_load_tsv_with_custom_columns(tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text("who\twhat\n1\t10\n2\t10\n2\t30\n")
    data = load_table(path, user_col="who", item_col="what")
    assert pairs(data) == {(1, 10), (2, 10), (2, 30)}


def test_load_dat_with_double_colon_separator(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("user::item::rating\n1::5::3\n1::6::4\n")
    assert pairs(load_table(path, "user", "item")) == {(1, 5), (1, 6)}


def test_load_with_explicit_separator(tmp_path):
    path = tmp_path / "events.log"
    path.write_text("userId;movieId\n1;2\n3;4\n")
    assert pairs(load_table(path, sep=";")) == {(1, 2), (3, 4)}


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "absent.csv")


def test_missing_columns_in_file(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(
        DataError,
        match=r"missing column\(s\) 'userId', 'movieId' in .*events.csv; available: 'a', 'b'",
    ):
        load_table(path)


def test_malformed_csv_names_the_file(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("userId,movieId\n1,2\n3,4,5,6\n")
    with pytest.raises(DataError, match="broken.csv: malformed"):
        load_table(path)


def test_empty_file_names_the_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty.csv"):
        load_table(path)


def test_header_only_file_is_empty(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("userId,movieId\n")
    with pytest.raises(DataError, match="empty"):
        load_table(path)


def test_bad_parquet_gives_a_clear_error(tmp_path):
    path = tmp_path / "events.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"events.parquet: .*Parquet"):
        load_table(path)
