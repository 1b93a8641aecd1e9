"""`labpgt train --dataset my.csv --label class` end to end: train, inspect, report, replay, and
resume after SIGKILL, all bit for bit and without the CSV once training has started."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from labpgt.cli import main
from labpgt.runfile import RunReader

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--estimator", "node", "--budget", "2000", "--seed", "3", "--eval-every", "5", "--checkpoint-every", "2", "--no-progress"]


def write_my_csv(path: Path) -> None:
    """Iris as a user would have it: a header, text labels in a column called 'class' (not the last)."""
    with np.load(ROOT / "labpgt" / "data" / "iris.npz") as z:
        x, y, names = z["features"], z["labels"], z["class_names"]
    lines = ["sepal_length,sepal_width,class,petal_length,petal_width"]
    lines += [f"{a:.1f},{b:.1f},{names[k]},{c:.1f},{d:.1f}" for (a, b, c, d), k in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")


def final_params(path: Path) -> bytes:
    with RunReader(path) as r:
        return np.asarray(r.last_checkpoint()["params"], dtype=np.float64).tobytes()


def test_train_on_a_csv_then_inspect_report_replay_and_resume_after_sigkill_without_it(tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "my.csv"
    write_my_csv(csv)

    # the reference: uninterrupted, options from an experiment TOML (the same names as the flags)
    (tmp_path / "exp.toml").write_text('dataset = "my.csv"\nlabel = "class"\n')
    assert main(["train", "--config", "exp.toml", "--out", "reference.h5", *COMMON]) == 0

    # the same run in a process that is killed (SIGKILL) after its third checkpoint
    killed = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "labpgt.cli", "train", "--dataset", "my.csv", "--label", "class",
                             "--out", str(killed), *COMMON], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = 0
    while checkpoints < 3:
        try:
            proc.wait(timeout=0.05)  # polling the file from outside; not a timing assertion
            raise AssertionError(f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
        except subprocess.TimeoutExpired:
            pass
        if killed.exists():
            try:
                with RunReader(killed) as r:
                    checkpoints = r.n_checkpoints
            except (OSError, ValueError):
                pass  # still being created
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    csv.unlink()  # from here on, everything comes from the run files
    capsys.readouterr()
    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    assert final_params(killed) == final_params(tmp_path / "reference.h5")

    with RunReader(killed) as r, RunReader(tmp_path / "reference.h5") as ref:
        def experiment(reader):  # the same experiment, apart from where its file went
            return [line for line in reader.metadata["experiment_toml"].splitlines() if not line.startswith("out =")]
        assert experiment(r) == experiment(ref)
        record = r.dataset()
        assert record.embedded and record.class_names == ("setosa", "versicolor", "virginica")
        assert record.label_column == "class" and record.path == str(csv)
        assert record.feature_names == ("sepal_length", "sepal_width", "petal_length", "petal_width")
        assert len(r.resumes()["checkpoint"]) == 1
    with h5py.File(killed, "r") as f:  # plain h5py sees the record too
        assert f["dataset"].attrs["file_sha256"] == record.file_sha256 and f["dataset/labels"].shape == (150,)

    for path in (killed, tmp_path / "reference.h5"):
        capsys.readouterr()
        assert main(["replay", str(path)]) == 0
        assert "bit for bit" in capsys.readouterr().out
    assert main(["inspect", str(killed)]) == 0
    out = capsys.readouterr().out
    assert "dataset: my (csv file" in out and "label column 'class'" in out and "data kept in the run file" in out
    assert main(["report", str(killed), "--out", str(tmp_path / "report")]) == 0
    assert list((tmp_path / "report").glob("*.png"))


def test_bad_data_stops_before_any_run_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.csv").write_text("a,b,class\n1,2,x\n3,oops,y\n5,6,x\n7,8,y\n")
    assert main(["train", "--dataset", "bad.csv", "--out", "runs", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: bad.csv: row 2 (line 3), column 2 'b': 'oops' is not a number; allowed: finite "
                           "decimal numbers (NaN and infinity are not)")
    assert not list(tmp_path.glob("runs/*.h5"))
    assert main(["train", "--model", "transformer", "--dataset", "bad.csv", "--no-progress"]) == 2
    assert "option 'dataset' = 'bad.csv' applies to the dense and deep models only" in capsys.readouterr().err


def test_a_large_data_set_is_kept_as_path_and_hash_and_a_changed_file_is_refused(tmp_path, capsys, monkeypatch,
                                                                                 ctrl_c_at_checkpoint):
    from labpgt.data import record as record_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(record_module, "EMBED_LIMIT_BYTES", 1000)  # as if my.csv held more than 10 MB
    write_my_csv(tmp_path / "my.csv")
    run = tmp_path / "run.h5"
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=3)
        assert main(["train", "--dataset", "my.csv", "--label", "class", "--out", str(run), *COMMON]) == 130
    with RunReader(run) as r:
        record = r.dataset()
    assert not record.embedded and record.path == str(tmp_path / "my.csv")
    capsys.readouterr()
    assert main(["replay", str(run)]) == 0  # the file is there and unchanged

    (tmp_path / "my.csv").write_text((tmp_path / "my.csv").read_text().replace("setosa", "Setosa", 1))
    before = run.read_bytes()
    for argv in (["replay", str(run)], ["train", "--resume", str(run), "--no-progress"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {run}: the data set file {tmp_path / 'my.csv'} has SHA-256 ")
        assert f"but the run was made with {record.file_sha256}: the file changed" in err and "\n" not in err
    assert run.read_bytes() == before  # nothing written
    (tmp_path / "my.csv").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "is missing; put the file" in capsys.readouterr().err
