"""Bad and hostile data files: every one is a DataError naming the file and the problem
(issue 16, "Loaders"); nothing escapes as a bare exception or is silently accepted."""

import io
import json
import tarfile

import pytest

from common.data import DataError, load_mergerec_json, load_recbole
from common.data.mergerec_json import extract_archive

from .conftest import print_tally, write_domain

TRIED: list[tuple[str, bool]] = []  # (case, handled cleanly), printed at the end


def archive_of(folder, path, extra: dict[str, bytes] | None = None, level: int = 9):
    with tarfile.open(path, "w:gz", compresslevel=level) as tar:
        tar.add(folder, arcname=folder.name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(f"{folder.name}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def expect_data_error(case: str, fn, *where: str) -> DataError:
    try:
        fn()
    except DataError as exc:
        ok = all(w in str(exc) for w in where)
        TRIED.append((case, ok))
        assert ok, f"{case}: {exc}"
        return exc
    except Exception as exc:  # noqa: BLE001 - the point is to catch what escapes
        TRIED.append((case, False))
        raise AssertionError(f"{case}: escaped as {type(exc).__name__}: {exc}") from exc
    TRIED.append((case, False))
    raise AssertionError(f"{case}: accepted silently")


def test_truncated_archive(tiny_domain_dir, tmp_path):
    whole = archive_of(tiny_domain_dir, tmp_path / "Tiny.tar.gz").read_bytes()
    cut = tmp_path / "Cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    expect_data_error("truncated .tar.gz", lambda: load_mergerec_json(cut, cache_dir=tmp_path / "c"),
                      "Cut.tar.gz", "cannot unpack")


def test_archive_bomb_is_refused_before_writing(tiny_domain_dir, tmp_path):
    bomb = archive_of(tiny_domain_dir, tmp_path / "Bomb.tar.gz", {"padding.bin": bytes(50_000_000)})
    cache = tmp_path / "cache"
    expect_data_error("archive expanding far beyond its size",
                      lambda: extract_archive(bomb, cache), "Bomb.tar.gz", "expand")
    assert not any(cache.rglob("padding.bin"))


def test_replaced_archive_of_the_same_size_is_unpacked_again(tiny_domain_dir, tmp_path):
    path = archive_of(tiny_domain_dir, tmp_path / "Tiny.tar.gz", level=0)
    first = load_mergerec_json(path, cache_dir=tmp_path / "cache")
    other = write_domain(tmp_path / "other" / "Tiny", **{"meta_data.json": {
        k: {"title": f"ITEM {k}", "brand": "b", "category": "c"} for k in "ABCD"}})
    size = path.stat().st_size
    archive_of(other, path, level=0)
    assert path.stat().st_size == size  # same size, other content
    second = load_mergerec_json(path, cache_dir=tmp_path / "cache")
    ok = first.item_texts[0] == "item A b c" and second.item_texts[0] == "ITEM A b c"
    TRIED.append(("archive replaced by one of the same size", ok))
    assert ok


@pytest.mark.parametrize("case,content,message", [
    ("UTF-16 JSON", json.dumps({"0": [0, 1]}).encode("utf-16"), "not UTF-8"),
    ("non-UTF-8 bytes", b'{"0": [0, 1], "x\xff": []}', "not UTF-8"),
    ("100k-deep JSON", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("duplicate user key", b'{"0": [0, 1], "1": [2, 3, 0], "2": [1, 2], "1": [3]}',
     "key '1' appears more than once"),
])
def test_hostile_train_json(tmp_path, case, content, message):
    folder = write_domain(tmp_path / "Bad")
    (folder / "train.json").write_bytes(content)
    expect_data_error(case, lambda: load_mergerec_json(folder), "train.json", message)


def test_null_and_invalid_titles(tmp_path):
    meta = {k: {"title": f"item {k}", "brand": None, "category": ["c", None]} for k in "ABCD"}
    folder = write_domain(tmp_path / "Nulls", **{"meta_data.json": meta})
    texts = load_mergerec_json(folder).item_texts
    ok = texts[0] == "item A c" and not any("None" in t for t in texts)
    TRIED.append(("null brand / category entries", ok))
    assert ok, texts
    meta["D"] = {"title": None, "brand": None, "category": None}
    folder = write_domain(tmp_path / "AllNull", **{"meta_data.json": meta})
    expect_data_error("null title, brand and category", lambda: load_mergerec_json(folder),
                      "meta_data.json", "item D", "no text")
    raw = json.dumps({**meta, "D": {"title": "x"}}).replace('"x"', '"\\ud800 lipstick"')
    folder = write_domain(tmp_path / "Surrogate", **{"meta_data.json": raw})
    expect_data_error("lone-surrogate title", lambda: load_mergerec_json(folder),
                      "meta_data.json", "item D", "not valid Unicode")


def _recbole(folder, inter: str, item: str = "item_id:token\ttitle:token_seq\nx\tred\ny\tblue\n"):
    folder.mkdir()
    (folder / f"{folder.name}.inter").write_text(inter)
    (folder / f"{folder.name}.item").write_text(item)
    return folder


def test_hostile_recbole_files(tmp_path):
    empty = _recbole(tmp_path / "empty", "")
    expect_data_error("empty RecBole .inter", lambda: load_recbole(empty), "empty.inter", "empty")
    nan = _recbole(tmp_path / "nan", "user_id:token\titem_id:token\ttimestamp:float\n"
                   "u\tx\t1\nu\ty\tnan\nu\tx\t3\n")
    expect_data_error("RecBole timestamp 'nan'", lambda: load_recbole(nan), "nan.inter",
                      "'nan'", "not a finite number")


def test_zz_print_the_count():
    print_tally("hostile data files", TRIED)
