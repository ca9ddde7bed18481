"""Data layer: loading implicit feedback, synthetic data, the paper's split and negatives."""

from pyro_bamf.data.interactions import DataError, Interactions, from_frame, load_table
from pyro_bamf.data.movielens import (
    EXPECTED,
    URL,
    cache_dir,
    fetch_movielens,
    find_movielens,
    load_movielens,
    movie_titles,
)
from pyro_bamf.data.planted import make_planted, planted_anchors
from pyro_bamf.data.sources import load_data, resolve_spec
from pyro_bamf.data.split import Candidates, ImplicitSplit, Positives
from pyro_bamf.data.synthetic import make_synthetic, planted_preferences

__all__ = [
    "EXPECTED",
    "URL",
    "Candidates",
    "DataError",
    "ImplicitSplit",
    "Interactions",
    "Positives",
    "cache_dir",
    "fetch_movielens",
    "find_movielens",
    "from_frame",
    "load_data",
    "load_movielens",
    "load_table",
    "make_planted",
    "make_synthetic",
    "movie_titles",
    "planted_anchors",
    "planted_preferences",
    "resolve_spec",
]
