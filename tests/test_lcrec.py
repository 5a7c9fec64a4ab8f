"""The LC-Rec JSON loader (``<Domain>.inter.json`` + ``<Domain>.item.json``): leave-one-out
splits, item text, format detection, and a DataError naming the file and the problem for every
malformed input."""

import json
import tarfile

import pytest

from common.data import DataError, detect_format, load_lcrec, load_path
from common.experiment import load_source
from common.settings import DomainSource

SHARED_LCREC = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "lcrec"

ITEMS = {
    "0": {"title": "Red Stapler", "description": "A very red stapler for offices.",
          "brand": "Swingline", "categories": "Office Products,Staplers"},
    "1": {"title": "Staples 1000", "description": "", "brand": "Swingline",
          "categories": "Office Products,Staples"},
    "2": {"title": "title_2", "description": "description_2", "brand": "Acme",
          "categories": ["Office Products", "Paper"]},
    "3": {"title": "Blue Pen", "description": "Writes blue.", "brand": "", "categories": ""},
    "10": {"title": "Unbought Lamp", "description": "", "brand": "Lux", "categories": "Lamps"},
}
INTER = {"7": [0, 1, 2, 3], "8": [3, 2, 1], "9": [1, 0]}


def write_lcrec(folder, inter=INTER, items=ITEMS, stem="Office"):
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, content in ((".inter.json", inter), (".item.json", items)):
        if content is None:
            continue
        text = content if isinstance(content, (str, bytes)) else json.dumps(content)
        path = folder / f"{stem}{suffix}"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


def test_leave_one_out_and_item_text(tmp_path):
    d = load_lcrec(write_lcrec(tmp_path / "Office"))
    assert d.name == "Office" and d.num_items == 5 and d.item_keys == ["0", "1", "2", "3", "10"]
    # user 9 has two items only: no split possible, left out like RecBole's short users
    assert d.user_ids == ["7", "8"]
    assert d.train == [[0, 1], [3]] and d.val == [2, 2] and d.test == [3, 1]
    assert d.item_texts[0] == "Red Stapler Swingline Office Products, Staplers"
    assert d.item_texts[2] == "Acme Office Products, Paper"  # placeholder title dropped
    assert d.item_texts[4] == "Unbought Lamp Lux Lamps"  # in the catalogue, never bought
    with_desc = load_lcrec(tmp_path / "Office", description_chars=8)
    assert with_desc.item_texts[0] == "Red Stapler Swingline Office Products, Staplers A very"
    assert with_desc.item_texts[2] == "Acme Office Products, Paper"  # placeholder description


def test_archive_detection_and_source(tmp_path):
    folder = write_lcrec(tmp_path / "src" / "Office")
    archive = tmp_path / "Office.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="Office")
    assert detect_format(archive) == "lcrec" and detect_format(folder) == "lcrec"
    a = load_path(archive, cache_dir=tmp_path / "cache")
    b = load_source(DomainSource("Shop", "lcrec", str(archive), description_chars=5), tmp_path)
    assert a.train == b.train and a.name == "Office" and b.name == "Shop"
    assert b.item_texts[0].endswith("Staplers A")  # cut at a word boundary


@pytest.mark.parametrize("case,inter,items,file,message", [
    ("inter not JSON", "{not json", ITEMS, "inter.json", "not valid JSON"),
    ("inter not UTF-8", b'{"7": [0, 1, 2], "\xff": []}', ITEMS, "inter.json", "not UTF-8"),
    ("inter a list", [[0, 1, 2]], ITEMS, "inter.json", "expected a non-empty JSON object"),
    ("inter empty", {}, ITEMS, "inter.json", "expected a non-empty JSON object"),
    ("user maps to a number", {"7": 3}, ITEMS, "inter.json", "user 7 must map to a list"),
    ("item id a string", {"7": [0, "1", 2]}, ITEMS, "inter.json", "item id '1'"),
    ("item id a bool", {"7": [0, True, 2]}, ITEMS, "inter.json", "item id True"),
    ("item id a float", {"7": [0, 1.5, 2]}, ITEMS, "inter.json", "item id 1.5"),
    ("unknown item", {"7": [0, 1, 99]}, ITEMS, "inter.json", "item 99"),
    ("every user too short", {"7": [0, 1], "8": [2]}, ITEMS, "inter.json", "no user has"),
    ("duplicate user", '{"7": [0, 1, 2], "7": [1, 2, 3]}', ITEMS, "inter.json", "key '7'"),
    ("items not an object", INTER, ["a"], "item.json", "expected a non-empty JSON object"),
    ("item id not a number", INTER, {**ITEMS, "x1": {"title": "t"}}, "item.json", "'x1'"),
    ("item ids equal as numbers", INTER, {**ITEMS, "01": {"title": "t"}}, "item.json",
     "repeat as numbers"),
    ("metadata not an object", INTER, {**ITEMS, "3": "Blue Pen"}, "item.json",
     "item 3 is not an object"),
    ("title a number", INTER, {**ITEMS, "3": {"title": 5}}, "item.json", "item 3 field 'title'"),
    ("no text at all", INTER, {**ITEMS, "3": {"title": "title_3", "brand": None}}, "item.json",
     "no text metadata"),
    ("item file missing", INTER, None, "item.json", "required file is missing"),
])
def test_malformed_inputs_name_file_and_problem(tmp_path, case, inter, items, file, message):
    folder = write_lcrec(tmp_path / "Office", inter, items)
    with pytest.raises(DataError) as exc:
        load_lcrec(folder)
    assert f"Office.{file}" in str(exc.value) and message in str(exc.value), (case, exc.value)


def test_folder_and_archive_problems(tmp_path):
    with pytest.raises(DataError, match="one \\*.inter.json"):
        load_lcrec(tmp_path)  # empty folder
    two = write_lcrec(write_lcrec(tmp_path / "Two"), stem="Other")
    with pytest.raises(DataError, match="found \\['Office.inter.json', 'Other.inter.json'\\]"):
        load_lcrec(two)
    assert load_lcrec(two, "Other").name == "Other"  # a name picks one pair
    bad = tmp_path / "Bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="Bad.tar.gz.*cannot unpack"):
        load_lcrec(bad, cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="description_chars"):
        load_lcrec(two, "Other", description_chars=-1)
    with pytest.raises(DataError, match="lcrec format only"):
        load_path(two, "recbole", description_chars=10)
    with pytest.raises(ValueError, match="lcrec format only"):
        DomainSource("Shop", "mergerec_json", "x", description_chars=10)


@pytest.mark.skipif(not (SHARED_LCREC / "Office.tar.gz").is_file(),
                    reason="the shared LC-Rec domains are not beside the checkout")
def test_shared_domains_load(tmp_path):
    office = load_path(SHARED_LCREC / "Office.tar.gz", cache_dir=tmp_path)
    assert (office.num_users, office.num_items) == (4905, 2420)
    assert sum(len(s) + 2 for s in office.train) == 53258  # every interaction kept
