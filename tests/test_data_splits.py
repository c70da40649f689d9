"""Splits (disjoint, grouped, stratified, deterministic) and split files."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from data_fixtures import write_busi

from semiseg_caw.data import Sample, read_split_file, stratified_group_split, write_split_file
from semiseg_caw.data.splits import check_split_ids, main, split_to_json


def make_samples(n: int = 300, seed: int = 0, unlabelled: int = 0) -> list[Sample]:
    """Labelled samples (classes 2:1:0.5) in groups of 1-4, plus unlabelled groups."""
    rng = np.random.default_rng(seed)
    samples, i, g = [], 0, 0
    while i < n:
        label = int(rng.choice(3, p=[0.57, 0.29, 0.14]))
        for _ in range(int(rng.integers(1, 5))):
            samples.append(
                Sample(id=f"s{i:04d}", image=None, label=label, group=f"g{g}", has_mask=True)
            )
            i += 1
        g += 1
    for j in range(unlabelled):
        samples.append(
            Sample(id=f"u{j:04d}", image=None, label=None, group=f"ug{j // 2}", has_mask=True)
        )
    return samples


def test_split_is_disjoint_complete_grouped_and_stratified():
    samples = make_samples()
    split = stratified_group_split(samples, (0.7, 0.1, 0.2), seed=42)
    ids = [i for name in ("train", "val", "test") for i in split[name]]
    assert len(ids) == len(set(ids)) == len(samples)
    where = {i: name for name in split for i in split[name]}
    groups: dict[str, set[str]] = {}
    for s in samples:
        groups.setdefault(s.group, set()).add(where[s.id])
    assert all(len(names) == 1 for names in groups.values())
    label = {s.id: s.label for s in samples}
    total = Counter(s.label for s in samples)
    for name, fraction in zip(("train", "val", "test"), (0.7, 0.1, 0.2), strict=True):
        assert split[name] == sorted(split[name])
        counts = Counter(label[i] for i in split[name])
        for c, n in total.items():
            assert abs(counts[c] - fraction * n) <= 4, (name, c, counts[c], fraction * n)


def test_split_is_deterministic_and_seeded():
    samples = make_samples()
    first = stratified_group_split(samples, seed=42)
    assert first == stratified_group_split(list(reversed(samples)), seed=42)
    assert first != stratified_group_split(samples, seed=7)


def test_unlabelled_samples_only_go_to_train():
    samples = make_samples(120, unlabelled=20)
    # an unlabelled member inside labelled groups
    samples += [Sample(id=f"x{g}", image=None, group=f"g{g}", has_mask=True) for g in range(30)]
    split = stratified_group_split(samples, seed=1)
    unlabelled = {s.id for s in samples if s.label is None}
    assert not unlabelled & set(split["val"] + split["test"])
    assert {f"u{j:04d}" for j in range(20)} <= set(split["train"])
    groups_in_eval = {s.group for s in samples if s.id in set(split["val"] + split["test"])}
    left_out = {s.id for s in samples if s.group in groups_in_eval and s.label is None}
    listed = set(split["train"] + split["val"] + split["test"])
    assert left_out and not left_out & listed  # their group is in val/test: not used at all


def test_split_without_any_label_still_splits():
    samples = [Sample(id=f"m{i}", image=None, has_mask=True) for i in range(50)]
    split = stratified_group_split(samples, seed=0)
    assert [len(split[n]) for n in ("train", "val", "test")] == [35, 5, 10]


def test_split_file_round_trip_and_format(tmp_path):
    samples = make_samples(60)
    split = stratified_group_split(samples)
    path = tmp_path / "s.json"
    write_split_file(path, split, "toy")
    record = json.loads(path.read_text())
    assert list(record) == ["dataset", "seed", "fractions", "train", "val", "test"]
    assert record["dataset"] == "toy" and record["seed"] == 42
    assert record["fractions"] == [0.7, 0.1, 0.2]
    assert read_split_file(path) == split
    # One id a line, for readable diffs of committed split files.
    tiny = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    expected = (
        '{\n  "dataset": "toy",\n  "seed": 42,\n  "fractions": [0.7, 0.1, 0.2],\n'
        '  "train": [\n    "a",\n    "b"\n  ],\n  "val": [\n    "c"\n  ],\n'
        '  "test": [\n    "d"\n  ]\n}\n'
    )
    assert split_to_json(tiny, "toy") == expected


def test_split_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_split_file(tmp_path / "none.json")
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"train": ["a"], "val": ["a"], "test": []}))
    with pytest.raises(ValueError, match="'a' is in both train and val"):
        read_split_file(path)
    path.write_text(json.dumps({"train": ["a"]}))
    with pytest.raises(ValueError, match="lacks"):
        read_split_file(path)
    with pytest.raises(ValueError, match="2 id\\(s\\) not found.*'b'"):
        check_split_ids({"train": ["a", "b"], "val": [], "test": ["c"]}, ["a"], "x.json")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('["imgs/0.png"]', "must hold a JSON object .* got a list"),
        ("null", "must hold a JSON object .* got null"),
        (
            '{"train": [["a"]], "val": [], "test": []}',
            r"'train' must list id strings; item 0 is a list \(\[\"a\"\]\)",
        ),
        (
            '{"train": ["a", 3], "val": [], "test": []}',
            r"'train' must list id strings; item 1 is a number \(3\)",
        ),
    ],
)
def test_split_file_of_the_wrong_shape_is_named(tmp_path, content, problem):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as excinfo:
        read_split_file(path)
    assert str(path) in str(excinfo.value)


def test_split_file_not_in_utf8_is_named_and_a_bom_is_fine(tmp_path):
    path = tmp_path / "s.json"
    text = json.dumps({"train": ["bénin (1).png"], "val": [], "test": []}, ensure_ascii=False)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 text.*re-save it as UTF-8") as excinfo:
        read_split_file(path)
    assert str(path) in str(excinfo.value)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # saved by Windows Notepad
    assert read_split_file(path)["train"] == ["bénin (1).png"]


# ----------------------------------------------------------------------------- command line


def _main(capsys, *args: str) -> tuple[int, str]:
    """Run the split command; returns its exit status and what it wrote to stderr."""
    try:
        main([str(a) for a in args])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def test_split_command_refuses_to_overwrite_unless_told(tmp_path, capsys):
    root = write_busi(tmp_path / "busi")
    out = tmp_path / "split.json"
    out.write_text("committed split\n")
    status, err = _main(capsys, "busi", root, out)
    assert status == 2 and "split.json exists" in err and "--overwrite" in err
    assert out.read_text() == "committed split\n"
    status, _ = _main(capsys, "busi", root, out, "--overwrite")
    assert status == 0 and len(read_split_file(out)["train"]) > 0
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["busi", "{tmp}/nowhere", "{tmp}/s.json"], "BUSI root folder not found"),
        (["manifest", "{tmp}/m.csv", "{tmp}/s.json"], "--classes"),
        (["busi", "{tmp}", "{tmp}/s.json", "--fractions", "0", "0", "0"], "fractions must be"),
        (["busi", "{tmp}", "{tmp}/s.json", "--fractions", ".7", ".1", "nan"], "finite, non-neg"),
    ],
)
def test_split_command_reports_user_errors_without_a_traceback(tmp_path, capsys, args, message):
    status, err = _main(capsys, *(a.format(tmp=tmp_path) for a in args))
    assert status == 2 and message in err
    assert "Traceback" not in err and err.splitlines()[0].startswith("python -m")
    assert not (tmp_path / "s.json").exists()


def test_split_command_names_an_output_it_cannot_write_before_reading_any_data(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "s.json"  # its folder is a file: nothing can be written there
    status, err = _main(capsys, "busi", tmp_path / "nowhere", out)
    assert status == 2 and f"{out} cannot be written" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- budgets
