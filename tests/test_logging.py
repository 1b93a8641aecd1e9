"""labpgt -v / --log-file: the wire trace (every message with role and resource) and no prints from the library."""
from __future__ import annotations

import logging

from labpgt import logs
from labpgt.cli import main


def test_log_file_holds_the_wire_trace_with_role_and_resource(tmp_path, capsys):
    log = tmp_path / "wire.log"
    assert main(["--log-file", str(log), "measure", "--current", "1.8", "--peaks", "1"]) == 0
    text = log.read_text()
    assert "instruments.wire: signal_generator TCPIP::127.0.0.1::" in text
    assert "query '*IDN?'" in text and "reply 'Keysight Technologies,N5183B" in text
    assert "spectrum_analyzer TCPIP::127.0.0.1::" in text and "reply <1604 bytes>" in text  # 401 float32 + header
    assert "current_source" in text
    # the console stays quiet: the trace goes to the file only unless -vv is given
    assert "instruments.wire" not in capsys.readouterr().err


def test_verbosity_sets_the_console_level(tmp_path):
    assert main(["-vv", "--log-file", str(tmp_path / "x.log"), "inspect", str(tmp_path / "missing.h5")]) == 1
    console = [h for h in logs._installed if not isinstance(h, logging.FileHandler)]
    assert len(console) == 1 and console[0].level == logging.DEBUG
    assert main(["inspect", str(tmp_path / "missing.h5")]) == 1  # a missing file is an error
    console = [h for h in logs._installed if not isinstance(h, logging.FileHandler)]
    assert len(console) == 1 and console[0].level == logging.WARNING  # configured once per command
    assert all(h in logging.getLogger().handlers for h in logs._installed)


def test_an_unwritable_log_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["--log-file", str(tmp_path / "no" / "such" / "dir.log"), "inspect", "x.h5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the log file") and err.count("\n") == 1
