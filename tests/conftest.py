import signal

import pytest

# A shell's background job (`pytest ... &`, or a CI step started that way) begins with SIGINT
# ignored, and an ignored signal stays ignored across exec: every `labpgt` child the tests start
# would then take no Ctrl-C, and the tests of Ctrl-C would fail for a reason outside the code.
# Handling it here puts the children back to the default, as at a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser):
    parser.addoption("--hardware", action="store_true", default=False,
                     help="run tests marked 'hardware' against real instruments")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--hardware"):
        return
    skip = pytest.mark.skip(reason="needs real instruments: pass --hardware")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


# CI explores the same hypothesis examples every run (a red CI then means a regression, not a
# newly drawn example); developers' runs keep exploring new ones and keep them in the database
try:
    import os

    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI"):
        settings.load_profile("ci")
except ImportError:  # hypothesis is a test extra
    pass


def _ctrl_c_at_checkpoint(monkeypatch, at_call: int) -> None:
    from labpgt.training.trainer import Trainer

    real, calls = Trainer.checkpoint, []

    def checkpoint(self):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "checkpoint", checkpoint)


@pytest.fixture
def ctrl_c_at_checkpoint():
    """``arm(monkeypatch, at_call)``: the trainer's ``at_call``-th checkpoint becomes a Ctrl-C (the run
    is marked aborted), for as long as ``monkeypatch`` (or its context) holds."""
    return _ctrl_c_at_checkpoint
