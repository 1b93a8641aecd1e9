"""A user's data file (CSV, npz, HDF5): reading, checking, splitting, and what a run keeps of it."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from labpgt.data import record as record_module
from labpgt.data.files import DatasetError, read_table
from labpgt.data.record import DatasetRecord, stratified_split
from labpgt.data.datasets import Dataset, load, open_dataset


def write_csv(path, rows, header="a,b,kind"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def toy_rows(n_per_class=(6, 5, 4), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for name, n in zip(("zeta", "alpha", "mid"), n_per_class):
        for _ in range(n):
            rows.append((round(float(rng.normal()), 3), round(float(rng.normal(5, 2)), 3), name))
    return rows


def test_csv_labels_become_classes_in_text_order_and_the_split_is_stratified(tmp_path):
    path = write_csv(tmp_path / "toy.csv", toy_rows())
    ds = open_dataset(str(path), label="kind", test_fraction=0.25)
    assert ds.class_names == ("alpha", "mid", "zeta") and ds.n_classes == 3 and ds.name == "toy"
    # alpha 5, mid 4, zeta 6 samples; 25%: quotas 1.25, 1.0, 1.5, floors 1 each, round(3.75) = 4 in all:
    # the one left goes to the largest remainder (zeta)
    assert np.bincount(ds.y_test, minlength=3).tolist() == [1, 1, 2]
    assert np.bincount(ds.y_train, minlength=3).tolist() == [4, 3, 4]
    rec = ds.to_record()
    assert len(np.intersect1d(rec.train_index, rec.test_index)) == 0
    assert sorted(np.concatenate([rec.train_index, rec.test_index]).tolist()) == list(range(15))
    # standardised with the train split's statistics only
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1, atol=1e-12)
    raw = np.array([r[:2] for r in toy_rows()], dtype=float)
    np.testing.assert_array_equal(ds.x_test, (raw[rec.test_index] - rec.mean) / rec.std)
    # the same file splits the same way every time, bit for bit
    again = open_dataset(str(path), label="kind", test_fraction=0.25)
    assert again.x_train.tobytes() == ds.x_train.tobytes() and again.y_test.tobytes() == ds.y_test.tobytes()


def test_whole_number_labels_are_ordered_by_value_and_the_label_defaults_to_the_last_column(tmp_path):
    rows = [(i, i * 2, lab) for i, lab in enumerate(["10", "9", "10", "9", "2", "2", "10", "9", "2"])]
    table = read_table(write_csv(tmp_path / "n.csv", rows))
    assert table.class_names == ("2", "9", "10") and table.label_column == "kind"
    assert table.labels.tolist() == [2, 1, 2, 1, 0, 0, 2, 1, 0]
    # a label column in the middle: the other columns are the features, in file order
    mid = read_table(write_csv(tmp_path / "m.csv", [(r[2], r[0], r[1]) for r in rows], header="kind,a,b"),
                     label="kind")
    assert mid.feature_names == ("a", "b") and mid.features.tobytes() == table.features.tobytes()


def test_npz_and_hdf5_read_like_the_csv(tmp_path):
    csv = read_table(write_csv(tmp_path / "toy.csv", toy_rows()))
    np.savez(tmp_path / "toy.npz", x=csv.features, y=np.array(csv.class_names)[csv.labels])
    with h5py.File(tmp_path / "toy.h5", "w") as f:
        f["x"] = csv.features.astype(np.float32).astype(np.float64)
        f["y"] = csv.labels.astype(np.uint8)
    npz = read_table(tmp_path / "toy.npz")
    assert npz.class_names == csv.class_names and npz.features.tobytes() == csv.features.tobytes()
    assert npz.labels.tolist() == csv.labels.tolist() and npz.file_format == "npz"
    h5 = read_table(tmp_path / "toy.h5")
    assert h5.class_names == ("0", "1", "2") and h5.labels.tolist() == csv.labels.tolist()


BAD_CSV = [
    ("a,b,kind\n1,2,x\n1,oops,y\n1,2,x\n3,4,y\n", "row 2 (line 3), column 2 'b': 'oops' is not a number"),
    ("a,b,kind\n1,2,x\nnan,2,y\n1,2,x\n3,4,y\n", "row 2 (line 3), column 1 'a': 'nan' is not finite"),
    ("a,b,kind\n1,2,x\n1,-inf,y\n1,2,x\n3,4,y\n", "row 2 (line 3), column 2 'b': '-inf' is not finite"),
    ("a,b,kind\n1,2,x\n1,,y\n1,2,x\n3,4,y\n", "row 2 (line 3), column 2 'b': is empty"),
    ("a,b,kind\n1,2,x\n1,2,\n1,2,x\n3,4,y\n", "row 2 (line 3), column 3 'kind' (the label) is empty"),
    ("a,b,kind\n1,2,x\n3,4,x\n5,6,x\n", "holds a single class ('x') in all 3 rows"),
    ("a,b,kind\n1,2,x\n3,4,y\n5,6,z\n7,8,x\n", "4 samples for 3 classes; allowed: at least 6"),
    ("a,b,kind\n1,2,x\n3,4,y\n5,6,x\n7,8,x\n", "class 'y' has a single sample (label column 'kind', row 2 (line 3))"),
    ("a,b,kind\n1,2,x\n3,4\n", "row 2 (line 3) has 2 cells; the header has 3 columns"),
    ("a,a,kind\n1,2,x\n", "the name 'a' is used twice"),
    ("", "the file is empty"),
]


@pytest.mark.parametrize("text,message", BAD_CSV, ids=range(len(BAD_CSV)))
def test_bad_csv_gets_one_line_naming_where(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DatasetError) as info:
        open_dataset(str(path))
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_files_and_options_are_refused(tmp_path):
    good = write_csv(tmp_path / "toy.csv", toy_rows())
    cases = [
        (lambda: open_dataset(str(good), label="class"), "no column 'class' for the labels; the header has: a, b, kind"),
        (lambda: open_dataset(str(tmp_path / "toy.txt")), "unknown data file type '.txt'; allowed: .csv, .npz"),
        (lambda: open_dataset(str(tmp_path / "gone.csv")), "cannot read the data file"),
        (lambda: open_dataset(str(good), test_fraction=1.0), "test_fraction = 1.0 is not allowed"),
        (lambda: open_dataset("iris", test_fraction=0.3), "bundled with a fixed split"),
        (lambda: load("mnist"), "allowed: iris, digits"),
    ]
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases.append((lambda: open_dataset(str(tmp_path / "junk.npz")), "not a .npz file"))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    cases.append((lambda: open_dataset(str(tmp_path / "junk.h5")), "not a readable HDF5 file"))
    np.savez(tmp_path / "obj.npz", x=np.array([[1.0], [2.0]]), y=np.array([{"a": 1}, {"b": 2}], dtype=object))
    cases.append((lambda: open_dataset(str(tmp_path / "obj.npz")), "not a readable .npz of plain arrays"))
    np.savez(tmp_path / "nox.npz", features=np.zeros((4, 2)), y=np.arange(4) % 2)
    cases.append((lambda: open_dataset(str(tmp_path / "nox.npz")), "no array 'x'; the file holds: features, y"))
    np.savez(tmp_path / "inf.npz", x=np.array([[1.0, 2.0], [3.0, np.inf], [1, 1], [2, 2]]), y=[0, 1, 0, 1])
    cases.append((lambda: open_dataset(str(tmp_path / "inf.npz")), "x row 1, column 1: inf is not finite"))
    with h5py.File(tmp_path / "noy.h5", "w") as f:
        f["x"] = np.zeros((4, 2))
    cases.append((lambda: open_dataset(str(tmp_path / "noy.h5")), "no dataset '/y'"))
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert message in str(info.value), (message, str(info.value))


def test_split_keeps_every_class_in_both_splits():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2])
    train, test = stratified_split(labels, 0.1)
    assert set(labels[train]) == set(labels[test]) == {0, 1, 2}


def roundtrip(rec: DatasetRecord, tmp_path, name="r.h5") -> DatasetRecord:
    with h5py.File(tmp_path / name, "w") as f:
        rec.write(f.create_group("dataset"))
    with h5py.File(tmp_path / name, "r") as f:
        return DatasetRecord.read(f["dataset"])


@pytest.mark.parametrize("name", ["iris", "digits"])
def test_bundled_records_rebuild_the_same_arrays(name, tmp_path):
    ds = load(name)
    back = Dataset.from_record(roundtrip(ds.to_record(), tmp_path))
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert getattr(back, key).tobytes() == getattr(ds, key).tobytes()
    assert back.class_names == ds.class_names and back.n_classes == ds.n_classes


def test_a_record_rebuilds_without_the_file_and_a_large_one_checks_the_hash(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "toy.csv", toy_rows())
    ds = open_dataset(str(path), test_fraction=0.3)
    kept = roundtrip(ds.to_record(), tmp_path)
    assert kept.embedded and kept.class_names == ("alpha", "mid", "zeta") and kept.label_column == "kind"
    path.rename(tmp_path / "moved.csv")
    back = Dataset.from_record(kept)  # the file is gone: the run file's copy is enough
    assert back.x_train.tobytes() == ds.x_train.tobytes() and back.y_test.tobytes() == ds.y_test.tobytes()
    (tmp_path / "moved.csv").rename(path)

    monkeypatch.setattr(record_module, "EMBED_LIMIT_BYTES", 100)  # as if the data were above 10 MB
    big = roundtrip(open_dataset(str(path), test_fraction=0.3).to_record(), tmp_path, "big.h5")
    assert not big.embedded and big.path == str(path.resolve())
    assert Dataset.from_record(big).x_train.tobytes() == ds.x_train.tobytes()
    path.write_text(path.read_text().replace("alpha", "alpha2", 1))
    with pytest.raises(DatasetError, match=r"RUN.h5: the data set file .*toy.csv has SHA-256 [0-9a-f]{64}, but the "
                                           r"run was made with [0-9a-f]{64}: the file changed"):
        Dataset.from_record(big, where="RUN.h5")
    path.unlink()
    with pytest.raises(DatasetError, match="is not kept in the run file .* its file .*toy.csv is missing"):
        Dataset.from_record(big)
