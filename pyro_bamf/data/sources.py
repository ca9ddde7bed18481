"""One entry point from a command-line data spec to Interactions."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

from pyro_bamf.data.interactions import DataError, Interactions, load_table
from pyro_bamf.data.movielens import NAME, fetch_movielens, load_movielens
from pyro_bamf.data.planted import make_planted
from pyro_bamf.data.synthetic import make_synthetic

SPEC_HELP = (
    "a path (MovieLens zip or folder, or a .csv/.tsv/.txt/.dat/.parquet table with userId and "
    "movieId columns), 'movielens', 'synthetic[:key=value,...]', 'planted[:key=value,...]' "
    "or 'auto'"
)
_GENERATORS = {  # keyword -> (generator, its options and their types)
    "synthetic": (
        make_synthetic,
        {"n_users": int, "n_items": int, "rank": int, "mean_interactions": float, "seed": int},
    ),
    "planted": (
        make_planted,
        {
            "n_users": int,
            "n_items": int,
            "n_anchors": int,
            "anchors_per_user": int,
            "followers_per_anchor": int,
            "noise": int,
            "seed": int,
        },
    ),
}
GENERATED = tuple(_GENERATORS)  # the keywords of generated (synthetic) data
_KIND = {int: "an integer", float: "a numeric"}


def _parse_options(keyword: str, options: str) -> dict[str, int | float]:
    """Parse ``"n_users=200,seed=3"`` into keyword arguments of the ``keyword`` generator."""
    keys = _GENERATORS[keyword][1]
    kwargs: dict[str, int | float] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, _, value = (s.strip() for s in item.partition("="))
        if key not in keys:
            raise DataError(f"unknown {keyword} option {key!r}; valid keys: {', '.join(keys)}")
        convert = keys[key]
        try:
            kwargs[key] = convert(value)
        except ValueError as err:
            raise DataError(
                f"{keyword} option {item!r} needs {_KIND[convert]} value, as in {key}=3"
            ) from err
    return kwargs


def _looks_like_movielens(path: Path) -> bool:
    """A zip, a folder holding ratings.csv (or ml-latest-small/), or a MovieLens ratings.csv."""
    if path.is_dir() or path.suffix.lower() == ".zip":
        return True
    if path.name != "ratings.csv":
        return False
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.readline().startswith("userId,movieId")


def _load_path(path: Path) -> Interactions:
    """MovieLens loader for MovieLens-shaped paths, the generic table loader otherwise."""
    if _looks_like_movielens(path):
        return load_movielens(path)
    return load_table(path)


def _auto(data_dir: str | os.PathLike | None) -> Interactions:
    """MovieLens from the cache, else fetched; else synthetic data with a loud warning."""
    try:
        return load_movielens(data_dir=data_dir)
    except DataError as missing:
        try:
            return load_movielens(fetch_movielens(data_dir))
        except DataError as failed:
            reason = f"{missing}; fetching failed too: {failed}"
    warnings.warn(
        f"MovieLens {NAME} is unavailable, FALLING BACK TO SYNTHETIC DATA "
        f"(results are not comparable with the paper). Reason: {reason}",
        UserWarning,
        stacklevel=3,
    )
    data = make_synthetic()
    return dataclasses.replace(data, source=f"{data.source}, fallback: MovieLens unavailable")


def load_data(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Interactions:
    """Load interactions from a data spec.

    Args:
        spec: a path (MovieLens zip / folder / ratings.csv, or any table ``load_table`` reads);
            ``"movielens"`` (from the cache only, never the network); ``"synthetic"`` or
            ``"synthetic:n_users=200,n_items=400,seed=3"`` (overrides of make_synthetic);
            ``"planted"`` or ``"planted:noise=20,seed=1"`` (overrides of make_planted);
            ``"auto"`` (MovieLens from the cache, else fetched, else synthetic with a warning).
        data_dir: the cache folder for ``"movielens"`` and ``"auto"`` (see ``cache_dir``).

    An empty (or blank) string is refused rather than read as the current folder.
    """
    text = os.fspath(spec)
    if isinstance(spec, str) and not text.strip():
        raise DataError(f"the data spec is empty: expected {SPEC_HELP}")
    path = _as_path(spec)
    if path is not None:
        return _load_path(path)
    keyword, _, options = text.partition(":")
    if keyword == "movielens" and not options:
        return load_movielens(data_dir=data_dir)
    if keyword in _GENERATORS:
        return _GENERATORS[keyword][0](**_parse_options(keyword, options))
    if keyword == "auto" and not options:
        return _auto(data_dir)
    raise DataError(f"unknown data spec {text!r}: no such file or folder; expected {SPEC_HELP}")


def _as_path(spec: str | os.PathLike) -> Path | None:
    """``spec`` as the path :func:`load_data` reads (a path object, or a string naming an
    existing file or folder), else ``None`` (a keyword)."""
    path = Path(os.fspath(spec)).expanduser()
    return path if not isinstance(spec, str) or path.exists() else None


def resolve_spec(spec: str) -> str:
    """``spec`` with a path made absolute, so that it names the same data from any folder;
    keywords (``movielens``, ``auto``, ``synthetic:...``, ``planted:...``) are returned as
    they are."""
    path = _as_path(spec) if spec.strip() else None
    return spec if path is None else str(path.resolve())
