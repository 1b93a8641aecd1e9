"""A run file's life (issue 17, items 4-6): kills during creation, a full disk or a size limit, corrupt checkpoints.

    python scripts/runfile_life.py                              # this tree; JSON to scripts/results/runfile_life.json
    python scripts/runfile_life.py --tree /tmp/base --label before --json scripts/results/runfile_life_before.json
    python scripts/runfile_life.py --tmpfs                      # also a 3 MB tmpfs (needs root to mount)

Every run is `labpgt train` on the embedded simulated ring, run from ``--tree`` (PYTHONPATH), and
its end is compared with an uninterrupted run of the same command, bit for bit (final parameters).

* **creation**: ``--kills`` runs (half SIGKILL, half SIGINT) of ``train --budget 200``, each
  signalled a uniform random delay in [0, ``--max-delay``] s after the first file of the run
  appears in its folder (the run file, or the temporary name it is built under); by default
  ``--max-delay`` is how long the file of an uninterrupted run lives, measured first (creation,
  training and the end: it depends on the machine's load). Then: no file
  under the run's name -> the same command again; a file -> ``--resume``. Counted: what was left
  (no file / resumable / unusable), whether the follow-up ended the run bit for bit, and whether
  the follow-up's advice pointed back at the other command (an advice loop).
* **out of room**: ``train --budget 1536`` under RLIMIT_FSIZE at each of ``--limits``: the exit
  status (a signal is a crash), the one-line error, the status recorded, the file's length against
  HDF5's end-of-file address (a "truncated" file), then ``--resume`` without the limit and
  ``replay``. Mode ``write-failed`` turns the writer's foresight off (the write itself meets the
  limit); the tree before it has only the one mode. ``--tmpfs``: the same on a 3 MB tmpfs (ENOSPC),
  resumed after the tmpfs is grown to 40 MB.
* **checkpoints**: ``--corruptions`` runs interrupted after 3 checkpoints (``--checkpoint-every 1``);
  one bit of the last checkpoint flipped (params, optimizer state or RNG state, in turn); then
  ``--resume``: detected (a warning naming it) and ending bit for bit like the uninterrupted run?

Exit status 0 only if every run of this tree behaved (the before tree is expected not to).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_NO_FORESIGHT = r"""
import sys
try:
    from labpgt.runfile import storage
    storage.Room.check = lambda self, *args, **kwargs: None
except ImportError:
    pass
from labpgt.cli import main
sys.exit(main(sys.argv[1:]))
"""

_INTERRUPTED_AT_4TH_CHECKPOINT = r"""
import sys
from labpgt.training.trainer import Trainer
from labpgt.cli import main
real, calls = Trainer.checkpoint, []
def checkpoint(self):
    calls.append(1)
    if len(calls) == 4:
        raise KeyboardInterrupt
    return real(self)
Trainer.checkpoint = checkpoint
sys.exit(main(sys.argv[1:]))
"""


class Tree:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.env = {**os.environ, "PYTHONPATH": str(self.root)}

    def cli(self, *args) -> list[str]:
        return [sys.executable, "-m", "labpgt.cli", *map(str, args)]

    def code(self, code: str, *args) -> list[str]:
        return [sys.executable, "-c", code, *map(str, args)]

    def run(self, command, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=self.env, cwd=self.root, timeout=600,
                              **kwargs)


def train_args(out: Path, budget: int, seed: int, *extra) -> list:
    return ["train", "--estimator", "node", "--budget", budget, "--seed", seed, "--out", out, "--no-progress", *extra]


def final_params(path: Path) -> bytes | None:
    """The last checkpoint's parameters of a completed run (plain h5py: any tree's file)."""
    try:
        with h5py.File(path, "r") as f:
            committed = f["committed"][:]
            status = int(f["status/code"][int(committed[4]) - 1])
            if status != 1:  # completed
                return None
            return np.asarray(f["checkpoints/params"][int(committed[3]) - 1]).tobytes()
    except Exception:  # noqa: BLE001 - anything unreadable is "no final parameters"
        return None


def reference(tree: Tree, work: Path, budget: int, seed: int, *extra) -> bytes:
    path = work / f"reference-{budget}-{seed}-{'-'.join(map(str, extra))}.h5"
    if not path.exists():
        proc = tree.run(tree.cli(*train_args(path, budget, seed, *extra)))
        if proc.returncode != 0:
            raise RuntimeError(f"the reference run failed: {proc.stderr[-1500:]}")
    return final_params(path)


def readable_run(tree: Tree, path: Path) -> dict:
    code = ("import sys; from labpgt.runfile import RunReader\n"
            "with RunReader(sys.argv[1]) as r: print(r.status, r.n_checkpoints)")
    proc = tree.run(tree.code(code, path))
    if proc.returncode != 0:
        return {"readable": False, "why": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    status, n = proc.stdout.split()
    return {"readable": True, "status": status, "checkpoints": int(n)}


# --------------------------------------------------------------------------- creation
def lifetime(tree: Tree, work: Path, seed: int, runs: int = 3) -> float:
    """Seconds from the first file of an uninterrupted run appearing in its folder to the run's end
    (the shortest of ``runs``: the machine's load only ever makes it longer)."""
    lives = []
    for k in range(runs):
        folder = work / f"lifetime-{k}"
        folder.mkdir()
        child = subprocess.Popen(tree.cli(*train_args(folder / "run.h5", 200, seed)), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=tree.env, cwd=tree.root)
        while child.poll() is None and not any(folder.iterdir()):
            time.sleep(0.0005)
        appeared = time.monotonic()
        child.wait()
        lives.append(time.monotonic() - appeared)
    return min(lives)


def creation(tree: Tree, work: Path, kills: int, max_delay: float | None, seed: int, log) -> dict:
    ref = reference(tree, work, 200, seed)
    life = lifetime(tree, work, seed)
    if max_delay is None:  # the whole life of the file on this machine now: creation, training, the end
        max_delay = life
    log(f"  an uninterrupted run lasts {life * 1e3:.0f} ms from its first file; signals within "
        f"{max_delay * 1e3:.0f} ms")
    rows = []
    rng = random.Random(seed)
    for i in range(kills):
        folder = work / f"kill-{i}"
        folder.mkdir()
        out = folder / "run.h5"
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGINT
        delay = rng.uniform(0.0, max_delay)
        child = subprocess.Popen(tree.cli(*train_args(out, 200, seed)), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=tree.env, cwd=tree.root)
        while child.poll() is None and not any(folder.iterdir()):
            time.sleep(0.0005)
        time.sleep(delay)
        child.send_signal(sig)
        exit_code = child.wait()
        row = {"signal": sig.name, "delay_s": round(delay, 4), "exit": exit_code, "finished_first": exit_code == 0}
        if exit_code == 0:  # the run ended before the signal
            row.update(left="completed", follow_up="none", follow_up_exit=0, follow_up_says="",
                       bit_for_bit=final_params(out) == ref, temporary_names_left=[])
            rows.append(row)
            log(f"  kill {i}: {sig.name} after {delay * 1e3:.0f} ms -> the run had ended")
            continue
        if not out.exists():
            row["left"] = "no file"
            follow = tree.run(tree.cli(*train_args(out, 200, seed)))
            row["follow_up"] = "same command"
        elif readable_run(tree, out).get("status") == "completed":  # killed while it was ending
            row.update(left="completed", state=readable_run(tree, out), follow_up="none", follow_up_exit=0,
                       follow_up_says="", bit_for_bit=final_params(out) == ref,
                       temporary_names_left=sorted(p.name for p in folder.iterdir() if ".creating-" in p.name))
            rows.append(row)
            log(f"  kill {i}: {sig.name} after {delay * 1e3:.0f} ms -> a completed file (killed while ending)")
            continue
        else:
            state = readable_run(tree, out)
            row["state"] = state
            follow = tree.run(tree.cli("train", "--resume", out, "--no-progress"))
            row["follow_up"] = "--resume"
            if follow.returncode != 0:
                row["left"] = "unusable"
                again = tree.run(tree.cli(*train_args(out, 200, seed)))
                # the advice loop: --resume refuses the file, and the same command points back at --resume
                row["advice_loop"] = again.returncode != 0 and "--resume" in again.stderr
                row["same_command_says"] = (again.stderr.strip().splitlines() or [""])[0][:300]
            else:
                row["left"] = "resumable" if state.get("readable") else "unusable"
        row["follow_up_exit"] = follow.returncode
        row["follow_up_says"] = (follow.stderr.strip().splitlines() or [""])[0][:300] if follow.returncode else ""
        row["bit_for_bit"] = final_params(out) == ref
        row["temporary_names_left"] = sorted(p.name for p in folder.iterdir() if ".creating-" in p.name)
        rows.append(row)
        log(f"  kill {i}: {sig.name} after {delay * 1e3:.0f} ms -> {row['left']}; {row['follow_up']} exit "
            f"{follow.returncode}, bit for bit {row['bit_for_bit']}")
    count = {k: sum(1 for r in rows if r["left"] == k and not r["finished_first"])
             for k in ("no file", "resumable", "unusable", "completed")}
    return {"runs": rows, "life_s": round(life, 4), "max_delay_s": round(max_delay, 4), "left": count,
            "finished_before_the_signal": sum(r["finished_first"] for r in rows),
            "advice_loops": sum(bool(r.get("advice_loop")) for r in rows),
            "follow_ups_bit_for_bit": sum(r["bit_for_bit"] for r in rows),
            "ok": all(r["bit_for_bit"] and r["left"] != "unusable" and not r["temporary_names_left"] for r in rows)}


# --------------------------------------------------------------------------- out of room
def _limit(limit):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _superblock_eof(path: Path) -> int | None:
    head = path.read_bytes()[:48]
    if len(head) < 48 or head[8] not in (2, 3):
        return None
    return int.from_bytes(head[28:36], "little")


def out_of_room_row(tree: Tree, out: Path, seed: int, ref: bytes, command: list, preexec=None, grow=None) -> dict:
    proc = tree.run(command, preexec_fn=preexec)
    size = out.stat().st_size if out.exists() else 0
    eof = _superblock_eof(out) if out.exists() else None
    row = {"exit": proc.returncode, "crashed": proc.returncode < 0 or proc.returncode >= 128,
           "error": next((line for line in proc.stderr.splitlines() if line.startswith("error:")), "")[:400],
           "rig_safe_read_back": "the rig was left safe (read back:" in proc.stderr,
           "size": size, "hdf5_end_of_file": eof, "truncated": eof is not None and eof > size,
           "state": readable_run(tree, out) if out.exists() else None}
    if grow is not None:
        grow()
    resumed = tree.run(tree.cli("train", "--resume", out, "--no-progress"))
    row["resume_exit"] = resumed.returncode
    row["resume_says"] = (resumed.stderr.strip().splitlines() or [""])[0][:300] if resumed.returncode else ""
    row["bit_for_bit"] = final_params(out) == ref
    row["replay_exit"] = tree.run(tree.cli("replay", out)).returncode if row["bit_for_bit"] else None
    row["ok"] = (row["exit"] == 2 and "--resume" in row["error"] and row["rig_safe_read_back"]
                 and not row["truncated"] and (row["state"] or {}).get("status") == "failed"
                 and row["bit_for_bit"] and row["replay_exit"] == 0)
    return row


def out_of_room(tree: Tree, work: Path, limits: list[int], seed: int, tmpfs: bool, log) -> dict:
    ref = reference(tree, work, 1536, seed)
    rows = []
    for limit in limits:
        for mode in ("foresight", "write-failed"):
            out = work / f"limit-{limit}-{mode}.h5"
            argv = train_args(out, 1536, seed)
            command = tree.cli(*argv) if mode == "foresight" else tree.code(_NO_FORESIGHT, *argv)
            row = {"limit_bytes": limit, "mode": mode, **out_of_room_row(tree, out, seed, ref, command, _limit(limit))}
            rows.append(row)
            log(f"  RLIMIT_FSIZE {limit} ({mode}): exit {row['exit']}, status {(row['state'] or {}).get('status')}, "
                f"truncated {row['truncated']}, resume {row['resume_exit']}, bit for bit {row['bit_for_bit']}")
    if tmpfs:
        rows += _tmpfs_rows(tree, seed, ref, log)
    return {"runs": rows, "ok": all(r["ok"] for r in rows)}


def _tmpfs_rows(tree: Tree, seed: int, ref: bytes, log) -> list[dict]:
    rows = []
    for mode in ("foresight", "write-failed"):
        mount = Path(tempfile.mkdtemp(prefix="labpgt-tmpfs-"))
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)]).returncode != 0:
            log("  tmpfs: cannot mount (not root?); skipped")
            return rows
        try:
            out = mount / "run.h5"
            argv = train_args(out, 1536, seed)
            command = tree.cli(*argv) if mode == "foresight" else tree.code(_NO_FORESIGHT, *argv)

            def grow():
                subprocess.run(["mount", "-o", "remount,size=40m", str(mount)], check=True)
            row = {"tmpfs_bytes": 3 << 20, "mode": mode, **out_of_room_row(tree, out, seed, ref, command, grow=grow)}
        finally:
            subprocess.run(["umount", str(mount)])
            mount.rmdir()
        rows.append(row)
        log(f"  tmpfs 3 MB ({mode}): exit {row['exit']}, status {(row['state'] or {}).get('status')}, truncated "
            f"{row['truncated']}, resume {row['resume_exit']}, bit for bit {row['bit_for_bit']}")
    return rows


# --------------------------------------------------------------------------- checkpoints
def corruption(tree: Tree, work: Path, trials: int, seed: int, log) -> dict:
    extra = ("--checkpoint-every", 1)
    ref = reference(tree, work, 256, seed, *extra)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(trials):
        out = work / f"corrupt-{i}.h5"
        proc = tree.run(tree.code(_INTERRUPTED_AT_4TH_CHECKPOINT, *train_args(out, 256, seed, *extra)))
        assert proc.returncode == 130, proc.stderr[-1500:]
        what = ("params", "optimizer", "rng_state")[i % 3]
        with h5py.File(out, "r+") as f:
            ck, last = f["checkpoints"], int(f["committed"][3]) - 1
            if what == "rng_state":
                ds = ck["rng_state_utf8"]
                at = int(ck["rng_state_offset"][last]) + int(rng.integers(int(ck["rng_state_length"][last])))
                ds[at] = ds[at] ^ (1 << int(rng.integers(7)))  # stays ASCII (valid UTF-8)
            else:
                ds = ck["params"] if what == "params" else ck["optimizer"][sorted(ck["optimizer"])[0]]
                values = np.ascontiguousarray(ds[last])
                raw = bytearray(values.tobytes())
                raw[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
                ds[last] = np.frombuffer(bytes(raw), dtype=ds.dtype).reshape(values.shape)
        resumed = tree.run(tree.cli("train", "--resume", out, "--no-progress"))
        row = {"flipped": what, "resume_exit": resumed.returncode,
               "warned": f"checkpoint {last} is corrupt" in resumed.stderr,
               "bit_for_bit": final_params(out) == ref}
        row["ok"] = row["resume_exit"] == 0 and row["warned"] and row["bit_for_bit"]
        rows.append(row)
        log(f"  flipped a bit of checkpoint {last}'s {what}: resume exit {row['resume_exit']}, warned {row['warned']}, "
            f"bit for bit {row['bit_for_bit']}")
    return {"runs": rows, "detected": sum(r["warned"] for r in rows),
            "bit_for_bit": sum(r["bit_for_bit"] for r in rows), "ok": all(r["ok"] for r in rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(ROOT), help="the labpgt tree to run (PYTHONPATH)")
    parser.add_argument("--label", default="after")
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--max-delay", type=float, default=None,
                        help="s after the run's first file appears (default: how long an uninterrupted run's file "
                             "lives, measured first)")
    parser.add_argument("--limits", type=int, nargs="+", default=[2_000_000, 2_500_000, 3_000_000])
    parser.add_argument("--corruptions", type=int, default=6)
    parser.add_argument("--tmpfs", action="store_true")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "scripts" / "results" / "runfile_life.json"))
    args = parser.parse_args()
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started in the background by a shell without job control: SIGINT is ignored, and would be
        # in every child too (a Ctrl-C that never arrives); give the children the default back
        signal.signal(signal.SIGINT, signal.default_int_handler)
    tree = Tree(Path(args.tree))
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="runfile-life-") as work:
        work = Path(work)
        log(f"creation ({args.kills} signals):")
        result = {"label": args.label, "tree": str(tree.root), "seed": args.seed,
                  "creation": creation(tree, work, args.kills, args.max_delay, args.seed, log)}
        log("out of room:")
        result["out_of_room"] = out_of_room(tree, work, args.limits, args.seed, args.tmpfs, log)
        log("corrupt checkpoints:")
        result["checkpoints"] = corruption(tree, work, args.corruptions, args.seed, log)
    result["wall_s"] = round(time.time() - started, 1)
    result["ok"] = all(result[k]["ok"] for k in ("creation", "out_of_room", "checkpoints"))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    c = result["creation"]
    log(f"creation: left {c['left']} ({c['finished_before_the_signal']} finished first), advice loops "
        f"{c['advice_loops']}, follow-ups bit for bit {c['follow_ups_bit_for_bit']}/{len(c['runs'])}")
    log(f"out of room: {sum(r['ok'] for r in result['out_of_room']['runs'])}/{len(result['out_of_room']['runs'])} ok")
    log(f"checkpoints: detected {result['checkpoints']['detected']}, bit for bit {result['checkpoints']['bit_for_bit']}"
        f"/{len(result['checkpoints']['runs'])}")
    log(f"{'ok' if result['ok'] else 'NOT ok'}; {result['wall_s']} s; {args.json}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
