"""MovieLens "latest small": find it in the local cache, fetch it once, load it offline.

The data is not shipped with the package: its licence (README.txt in the archive) allows research
use with attribution and forbids commercial use, so users fetch it themselves.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import pandas as pd

from pyro_bamf.atomic import atomic_path
from pyro_bamf.data.interactions import DataError, Interactions, from_frame

URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
NAME = "ml-latest-small"
EXPECTED = dict(n_interactions=100_836, n_users=610, n_items=9_724)
_ZIP_NAME = f"{NAME}.zip"
_RATINGS = f"{NAME}/ratings.csv"
_NOT_FOUND_HINT = (
    "run `pyro-bamf data fetch` (when online) or set BAMF_DATA_DIR to a folder holding "
    f"{NAME}/ (the unpacked {_ZIP_NAME} from {URL})"
)


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data_dir`` if given, else ``$BAMF_DATA_DIR``, else ~/.cache/pyro-bamf."""
    if data_dir is None:
        data_dir = os.environ.get("BAMF_DATA_DIR") or Path.home() / ".cache" / "pyro-bamf"
    return Path(data_dir).expanduser()


def find_movielens(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The unpacked ``ml-latest-small/`` folder or else the zip in the cache folder, or None."""
    root = cache_dir(data_dir)
    if (root / _RATINGS).is_file():
        return root / NAME
    if (root / _ZIP_NAME).is_file():
        return root / _ZIP_NAME
    return None


def _read_csv_member(path: Path, name: str) -> pd.DataFrame | None:
    """Read ``name`` (e.g. "ratings.csv") from a MovieLens zip, folder or file; None if absent.

    ``path`` may be the zip, the unpacked folder, its parent, or a file inside the folder.
    Raises DataError when the zip or the CSV is corrupt.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if Path(m).name == name]
                if not members:
                    return None
                with archive.open(min(members, key=len)) as handle:
                    return pd.read_csv(handle)
        if path.is_file() and path.suffix.lower() == ".zip":
            raise DataError(f"{path}: not a valid zip archive (truncated or corrupt?)")
        folder = path.parent if path.is_file() else path
        for candidate in (folder / name, folder / NAME / name):
            if candidate.is_file():
                return pd.read_csv(candidate)
        return None
    except (
        zipfile.BadZipFile,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        EOFError,
        OSError,
    ) as err:
        raise DataError(f"{path}: cannot read {name} ({type(err).__name__}: {err})") from err


def _dataset_label(path: Path) -> str:
    """Name of the data set held at ``path``: the folder name or the zip's stem."""
    if path.suffix.lower() == ".zip":
        return path.stem
    if path.is_file():
        return path.parent.name
    return NAME if (path / NAME).is_dir() else path.name


def load_movielens(
    path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
) -> Interactions:
    """Load MovieLens ratings as implicit feedback: every rating is one positive interaction.

    Args:
        path: the zip, the unpacked folder (or its parent), or the folder's ratings.csv. None
            looks in the cache folder (see ``cache_dir(data_dir)``). Never touches the network.

    Returns:
        Interactions over (userId, movieId); rating values and timestamps are ignored.
    """
    if path is None:
        found = find_movielens(data_dir)
        if found is None:
            raise DataError(
                f"MovieLens {NAME} not found in {cache_dir(data_dir)}: {_NOT_FOUND_HINT}"
            )
        path = found
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist: {_NOT_FOUND_HINT}")
    ratings = _read_csv_member(path, "ratings.csv")
    if ratings is None:
        raise DataError(f"{path} holds no ratings.csv: {_NOT_FOUND_HINT}")
    return from_frame(ratings, "userId", "movieId", source=f"{_dataset_label(path)} ({path})")


def movie_titles(
    path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
) -> dict[int, str]:
    """Original movieId -> title, from movies.csv beside the ratings; {} if there is none."""
    path = find_movielens(data_dir) if path is None else Path(path).expanduser()
    if path is None or not path.exists():
        return {}
    movies = _read_csv_member(path, "movies.csv")
    if movies is None or not {"movieId", "title"} <= set(movies.columns):
        return {}
    ids, titles = movies["movieId"].astype(int).tolist(), movies["title"].astype(str).tolist()
    return dict(zip(ids, titles, strict=True))


def _check_archive(path: Path) -> None:
    """Raise DataError unless ``path`` is the expected ml-latest-small zip with the right counts."""
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"not a zip archive ({path.stat().st_size} bytes; truncated or not the data set?)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if _RATINGS not in names:
                raise DataError(f"the zip holds no {_RATINGS} (found: {', '.join(names[:8])})")
            broken = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise DataError(f"corrupt zip archive ({err})") from err
    if broken is not None:
        raise DataError(f"corrupt zip archive (bad CRC in {broken})")
    data = load_movielens(path)
    found = dict(n_interactions=data.n_interactions, n_users=data.n_users, n_items=data.n_items)
    if found != EXPECTED:
        raise DataError(f"wrong content: found {found}, expected {EXPECTED}")


def _download(url: str, target: Path, timeout: float) -> None:
    """Stream ``url`` into ``target``; DataError on network errors or a short read."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out)
            expected = response.headers.get("Content-Length")
    except urllib.error.HTTPError as err:
        raise DataError(f"download failed: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise DataError(f"download failed (network error: {err.reason})") from err
    except (http.client.HTTPException, OSError) as err:
        raise DataError(f"download failed ({type(err).__name__}: {err})") from err
    size = target.stat().st_size
    if expected is not None and expected.isdigit() and int(expected) != size:
        raise DataError(f"truncated download: got {size} of {expected} bytes")


def _free_aside_name(target: Path) -> Path:
    """The first free name of ``<target>.invalid``, ``<target>.invalid.1``, ``.invalid.2``..."""
    aside = target.with_name(f"{target.name}.invalid")
    number = 0
    while aside.exists() or aside.is_symlink():
        number += 1
        aside = target.with_name(f"{target.name}.invalid.{number}")
    return aside


def fetch_movielens(
    data_dir: str | os.PathLike | None = None,
    url: str = URL,
    timeout: float = 60,
    replace_invalid: bool = False,
) -> Path:
    """Download ml-latest-small.zip into the cache folder (once) and return its path.

    An already present, valid zip is returned without downloading. The download goes to a
    temporary file in the cache folder and is moved into place only after it opens as a zip holding
    ``ml-latest-small/ratings.csv`` with exactly the EXPECTED counts; on any failure the partial
    file is deleted and a DataError says what was wrong.

    An existing file is never deleted. If the cached zip is invalid, a DataError says so and
    nothing is touched, unless ``replace_invalid``: then a verified download takes its place and
    the old file is renamed to ``ml-latest-small.zip.invalid`` (or ``.invalid.1``, ...), with a
    warning naming it; if the download fails, the old file stays as it was.
    """
    target = cache_dir(data_dir) / _ZIP_NAME
    invalid = None
    if target.exists():
        try:
            _check_archive(target)
            return target
        except DataError as err:
            invalid = err
        if not replace_invalid:
            raise DataError(
                f"the cached {target} is invalid: {invalid}; nothing was changed: run "
                "`pyro-bamf data fetch --replace-invalid` to download a verified copy "
                "(the invalid file is then renamed, not deleted)"
            )
    aside = None
    try:
        with atomic_path(target) as tmp:
            _download(url, tmp, timeout)
            _check_archive(tmp)
            if invalid is not None:
                aside = _free_aside_name(target)
                target.rename(aside)
    except DataError as err:
        kept = "" if invalid is None else f"; the cached {target} was left as it was"
        raise DataError(f"could not fetch MovieLens from {url}: {err}{kept}") from err
    if aside is not None:
        warnings.warn(
            f"the cached {target} was invalid: {invalid}; moved it to {aside} and put a "
            "verified download in its place",
            UserWarning,
            stacklevel=2,
        )
    return target
