"""MovieLens cache, offline loading, fetching (against a local HTTP server) and load_data."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pyro_bamf import cli as cli_module
from pyro_bamf.cli import main
from pyro_bamf.data import (
    EXPECTED,
    DataError,
    cache_dir,
    fetch_movielens,
    find_movielens,
    load_data,
    load_movielens,
    make_synthetic,
    movie_titles,
)
from pyro_bamf.data import movielens as movielens_module
from pyro_bamf.data import sources as sources_module

DESCRIBE = {
    "n_users": 610,
    "n_items": 9724,
    "n_interactions": 100_836,
    "density": pytest.approx(100_836 / (610 * 9724)),
    "max_user_interactions": 2698,
    "mean_user_interactions": pytest.approx(100_836 / 610),
}


def build_zip(target: Path, files: dict[str, bytes]) -> Path:
    """A zip holding ``files`` (archive name -> content)."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return target


@pytest.fixture(scope="module")
def served(movielens_dir, tmp_path_factory):
    """A local HTTP server on 127.0.0.1 serving good and bad archives; yields its base URL."""
    root = tmp_path_factory.mktemp("served")
    folder = movielens_dir / "ml-latest-small"
    ratings = (folder / "ratings.csv").read_bytes()
    good = build_zip(
        root / "good.zip",
        {
            "ml-latest-small/ratings.csv": ratings,
            "ml-latest-small/movies.csv": (folder / "movies.csv").read_bytes(),
        },
    )
    (root / "truncated.zip").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    dropped = b"".join(ratings.splitlines(keepends=True)[:-100])
    build_zip(root / "wrong.zip", {"ml-latest-small/ratings.csv": dropped})
    build_zip(root / "other.zip", {"something/else.csv": b"a,b\n1,2\n"})
    (root / "page.html").write_bytes(b"<html>Moved</html>")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def refused_url() -> str:
    """A URL on a local port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-latest-small.zip"


@pytest.fixture
def no_network(monkeypatch):
    """Make any attempt to open a URL fail the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the network must not be touched")

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    """No BAMF_DATA_DIR and an empty home folder, so nothing is cached."""
    monkeypatch.delenv("BAMF_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def assert_counts(data):
    assert data.describe() == DESCRIBE
    assert (
        dict(n_interactions=data.n_interactions, n_users=data.n_users, n_items=data.n_items)
        == EXPECTED
    )


@pytest.mark.parametrize("where", ["folder", "parent", "ratings.csv"])
def test_load_from_the_shared_copy(movielens_dir, where, no_network):
    folder = movielens_dir / "ml-latest-small"
    path = {"folder": folder, "parent": movielens_dir, "ratings.csv": folder / "ratings.csv"}[where]
    data = load_movielens(path)
    assert_counts(data)
    assert data.source.startswith("ml-latest-small (")
    assert data.user_ids[[0, -1]].tolist() == [1, 610]
    assert data.item_ids[[0, -1]].tolist() == [1, 193609]


def test_load_from_a_zip(movielens_dir, tmp_path, no_network):
    folder = movielens_dir / "ml-latest-small"
    path = build_zip(
        tmp_path / "ml-latest-small.zip",
        {"ml-latest-small/ratings.csv": (folder / "ratings.csv").read_bytes()},
    )
    assert load_movielens(path).fingerprint() == load_movielens(folder).fingerprint()
    assert movie_titles(path) == {}


def test_movie_titles(movielens_dir):
    titles = movie_titles(movielens_dir / "ml-latest-small")
    assert len(titles) == 9742
    assert titles[1] == "Toy Story (1995)"


def test_movie_titles_absent(tmp_path, empty_home):
    (tmp_path / "ratings.csv").write_text("userId,movieId\n1,2\n")
    assert movie_titles(tmp_path) == {}
    assert movie_titles() == {}


def test_cache_dir_priority(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BAMF_DATA_DIR", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "pyro-bamf"
    monkeypatch.setenv("BAMF_DATA_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_find_prefers_the_folder_then_the_zip(movielens_dir, tmp_path):
    assert find_movielens(movielens_dir) == movielens_dir / "ml-latest-small"
    assert find_movielens(tmp_path) is None
    (tmp_path / "ml-latest-small.zip").write_bytes(b"")
    assert find_movielens(tmp_path) == tmp_path / "ml-latest-small.zip"


def test_load_uses_the_cache_from_the_environment(movielens_dir, monkeypatch, no_network):
    monkeypatch.setenv("BAMF_DATA_DIR", str(movielens_dir))
    assert load_movielens().n_interactions == EXPECTED["n_interactions"]


def test_nothing_cached_gives_one_clear_message(empty_home, no_network):
    with pytest.raises(DataError) as info:
        load_movielens()
    message = str(info.value)
    assert "pyro-bamf data fetch" in message and "BAMF_DATA_DIR" in message
    assert str(empty_home / ".cache" / "pyro-bamf") in message
    with pytest.raises(DataError, match="pyro-bamf data fetch"):
        load_data("movielens")


def test_corrupt_zip_in_the_cache(tmp_path, no_network):
    (tmp_path / "ml-latest-small.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="not a valid zip"):
        load_movielens(data_dir=tmp_path)


def test_fetch_lands_a_valid_zip_in_the_cache(served, tmp_path, refused_url):
    cache = tmp_path / "cache"
    path = fetch_movielens(cache, url=f"{served}/good.zip", timeout=10)
    assert path == cache / "ml-latest-small.zip"
    assert sorted(p.name for p in cache.iterdir()) == ["ml-latest-small.zip"]
    assert_counts(load_movielens(path))
    assert movie_titles(data_dir=cache)[1] == "Toy Story (1995)"
    # Already present and valid: returned without downloading.
    assert fetch_movielens(cache, url=refused_url, timeout=10) == path


def test_fetch_replaces_an_invalid_cached_file_only_when_asked(served, tmp_path):
    (tmp_path / "ml-latest-small.zip").write_bytes(b"garbage")
    with pytest.raises(DataError, match="is invalid: not a zip archive .*--replace-invalid"):
        fetch_movielens(tmp_path, url=f"{served}/good.zip", timeout=10)
    assert (tmp_path / "ml-latest-small.zip").read_bytes() == b"garbage"
    with pytest.warns(UserWarning, match=r"moved it to .*ml-latest-small\.zip\.invalid and put"):
        path = fetch_movielens(tmp_path, url=f"{served}/good.zip", timeout=10, replace_invalid=True)
    assert_counts(load_movielens(path))
    assert (tmp_path / "ml-latest-small.zip.invalid").read_bytes() == b"garbage"


def test_invalid_cached_file_is_kept_when_the_refetch_fails(served, tmp_path):
    (tmp_path / "ml-latest-small.zip").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a zip archive.*was left as it was"):
        fetch_movielens(tmp_path, url=f"{served}/truncated.zip", timeout=10, replace_invalid=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ml-latest-small.zip"]
    assert (tmp_path / "ml-latest-small.zip").read_bytes() == b"garbage"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated.zip", "not a zip archive"),
        ("wrong.zip", r"wrong content: found \{'n_interactions': 100736"),
        ("other.zip", "holds no ml-latest-small/ratings.csv"),
        ("page.html", "not a zip archive"),
        ("absent.zip", "HTTP 404"),
    ],
)
def test_bad_downloads_leave_nothing_behind(served, tmp_path, name, reason):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=reason):
        fetch_movielens(cache, url=f"{served}/{name}", timeout=10)
    assert list(cache.iterdir()) == []


def test_connection_refused(tmp_path, refused_url):
    with pytest.raises(DataError, match="network error"):
        fetch_movielens(tmp_path / "cache", url=refused_url, timeout=10)
    assert not list((tmp_path / "cache").glob("*"))


@pytest.mark.parametrize("where", ["zip", "folder", "ratings.csv"])
def test_load_data_recognises_movielens_paths(movielens_dir, tmp_path, where, no_network):
    folder = movielens_dir / "ml-latest-small"
    if where == "zip":
        path = build_zip(
            tmp_path / "ml.zip",
            {"ml-latest-small/ratings.csv": (folder / "ratings.csv").read_bytes()},
        )
    else:
        path = folder if where == "folder" else folder / "ratings.csv"
    assert_counts(load_data(path))
    assert_counts(load_data(str(path)))


def test_load_data_movielens_from_the_cache(movielens_dir, no_network):
    assert_counts(load_data("movielens", data_dir=movielens_dir))


def test_load_data_generic_table(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("userId,movieId\nu1,i1\nu2,i1\n")
    data = load_data(path)
    assert data.n_interactions == 2 and data.user_ids.tolist() == ["u1", "u2"]


def test_load_data_unknown_spec():
    with pytest.raises(DataError, match="unknown data spec 'movielenz'"):
        load_data("movielenz")


def test_auto_prefers_the_cache(movielens_dir, no_network):
    assert_counts(load_data("auto", data_dir=movielens_dir))


def test_auto_fetches_when_the_cache_is_empty(served, tmp_path, monkeypatch):
    def fetch(data_dir):
        return fetch_movielens(data_dir, url=f"{served}/good.zip", timeout=10)

    monkeypatch.setattr(sources_module, "fetch_movielens", fetch)
    assert_counts(load_data("auto", data_dir=tmp_path))
    assert (tmp_path / "ml-latest-small.zip").is_file()


def test_auto_falls_back_to_synthetic_loudly(tmp_path, monkeypatch, refused_url):
    def fetch(data_dir):
        return fetch_movielens(data_dir, url=refused_url, timeout=10)

    monkeypatch.setattr(sources_module, "fetch_movielens", fetch)
    with pytest.warns(UserWarning, match="FALLING BACK TO SYNTHETIC DATA.*network error"):
        data = load_data("auto", data_dir=tmp_path)
    assert "fallback: MovieLens unavailable" in data.source
    assert data.fingerprint() == make_synthetic().fingerprint()


def test_load_only_reads_user_and_item_columns(tmp_path, no_network):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    frame = pd.DataFrame({"userId": [1, 1, 2], "movieId": [10, 20, 10], "rating": [5.0, 0.5, 3]})
    frame.to_csv(folder / "ratings.csv", index=False)
    data = load_movielens(folder)
    assert np.array_equal(data.items, [0, 1, 0])


# --------------------------------------------------------------------------- invalid cache


@pytest.fixture
def tiny_archive(tmp_path, monkeypatch) -> Path:
    """A three-rating ml-latest-small zip that passes the archive check (EXPECTED patched)."""
    ratings = b"userId,movieId,rating,timestamp\n1,10,4,0\n1,20,3,0\n2,10,5,0\n"
    path = build_zip(tmp_path / "tiny.zip", {"ml-latest-small/ratings.csv": ratings})
    monkeypatch.setattr(movielens_module, "EXPECTED", dict(n_interactions=3, n_users=2, n_items=2))
    return path


@pytest.fixture
def invalid_cache(tmp_path) -> Path:
    """A cache folder whose ml-latest-small.zip holds garbage."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-latest-small.zip").write_bytes(b"garbage")
    return cache


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_an_invalid_cached_zip_is_refused_untouched_and_offline(invalid_cache, no_network):
    with pytest.raises(DataError) as info:
        fetch_movielens(invalid_cache)
    message = str(info.value)
    assert str(invalid_cache / "ml-latest-small.zip") in message and "\n" not in message
    assert "not a zip archive (7 bytes" in message
    assert "pyro-bamf data fetch --replace-invalid" in message
    assert listing(invalid_cache) == {"ml-latest-small.zip": b"garbage"}


@pytest.mark.parametrize("served_file", ["absent.zip", "page.html"])
def test_replace_invalid_keeps_the_old_file_when_the_download_fails(
    invalid_cache, tmp_path, served_file
):
    (tmp_path / "page.html").write_bytes(b"<html>Moved</html>")
    url = (tmp_path / served_file).as_uri()
    with pytest.raises(DataError, match=r"could not fetch .* was left as it was$"):
        fetch_movielens(invalid_cache, url=url, replace_invalid=True)
    assert listing(invalid_cache) == {"ml-latest-small.zip": b"garbage"}


def test_replace_invalid_moves_the_old_file_to_a_free_name(invalid_cache, tiny_archive):
    (invalid_cache / "ml-latest-small.zip.invalid").write_bytes(b"older garbage")
    with pytest.warns(UserWarning, match=r"moved it to .*ml-latest-small\.zip\.invalid\.1 "):
        path = fetch_movielens(invalid_cache, url=tiny_archive.as_uri(), replace_invalid=True)
    assert load_movielens(path).n_interactions == 3
    assert listing(invalid_cache) == {
        "ml-latest-small.zip": path.read_bytes(),
        "ml-latest-small.zip.invalid": b"older garbage",
        "ml-latest-small.zip.invalid.1": b"garbage",
    }


def test_replace_invalid_leaves_a_valid_cached_zip_alone(tmp_path, tiny_archive, no_network):
    cached = tmp_path / "cache" / "ml-latest-small.zip"
    cached.parent.mkdir()
    cached.write_bytes(tiny_archive.read_bytes())
    assert fetch_movielens(cached.parent, replace_invalid=True) == cached
    assert [p.name for p in cached.parent.iterdir()] == ["ml-latest-small.zip"]


def test_cli_data_fetch_refuses_then_replaces_an_invalid_zip(
    invalid_cache, tiny_archive, monkeypatch, capsys
):
    argv = ["data", "fetch", "--data-dir", str(invalid_cache)]
    assert main(argv) == 2
    assert "--replace-invalid" in capsys.readouterr().err
    assert listing(invalid_cache) == {"ml-latest-small.zip": b"garbage"}

    def fetch(data_dir, **options):  # the real fetch, from the local archive
        return fetch_movielens(data_dir, url=tiny_archive.as_uri(), **options)

    monkeypatch.setattr(cli_module, "fetch_movielens", fetch)
    with pytest.warns(UserWarning, match=r"moved it to .*ml-latest-small\.zip\.invalid and"):
        assert main([*argv, "--replace-invalid"]) == 0
    assert capsys.readouterr().out.strip() == str(invalid_cache / "ml-latest-small.zip")
    assert (invalid_cache / "ml-latest-small.zip.invalid").read_bytes() == b"garbage"


def test_auto_falls_back_naming_an_invalid_cached_zip(invalid_cache, no_network):
    with pytest.warns(UserWarning, match="FALLING BACK.*the cached .*ml-latest-small.zip is inv"):
        data = load_data("auto", data_dir=invalid_cache)
    assert data.fingerprint() == make_synthetic().fingerprint()
    assert listing(invalid_cache) == {"ml-latest-small.zip": b"garbage"}


@pytest.mark.parametrize("spec", ["", "   ", "\t\n"])
def test_load_data_refuses_an_empty_spec(spec, tmp_path, monkeypatch):
    (tmp_path / "ratings.csv").write_text("userId,movieId\n1,2\n")  # was read from "."
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^the data spec is empty: expected a path \("):
        load_data(spec)
