"""Logging setup: log.txt on rank 0, warnings only elsewhere, idempotent, sorted arguments."""

import argparse
import logging

import pytest

from tvr.utils.logger import log_args, setup_logging

NAMES = ("tvr", "__main__", "main")


@pytest.fixture(autouse=True)
def restore_loggers():
    """setup_logging changes process-wide loggers; put them back for the other tests."""
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level) for n in NAMES}
    root_handlers = list(logging.getLogger().handlers)
    yield
    for n, (handlers, level) in saved.items():
        lg = logging.getLogger(n)
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
    logging.getLogger().handlers[:] = root_handlers


def _ours(name):
    return [h for h in logging.getLogger(name).handlers if getattr(h, "_tvr_handler", False)]


def test_rank0_writes_log_file_and_console(tmp_path, capsys):
    out = tmp_path / "run"
    setup_logging(str(out), rank=0)
    logging.getLogger("tvr.engine.train").info("epoch 1 loss 0.5")
    logging.getLogger("__main__").info("from main")
    logging.getLogger("tvr.x").debug("hidden debug")
    text = (out / "log.txt").read_text()
    assert "INFO tvr.engine.train: epoch 1 loss 0.5" in text
    assert "from main" in text and "hidden debug" not in text
    err = capsys.readouterr().err
    assert "epoch 1 loss 0.5" in err


def test_idempotent_no_duplicate_lines(tmp_path, capsys):
    setup_logging(str(tmp_path), rank=0)
    setup_logging(str(tmp_path), rank=0)
    assert len(_ours("tvr")) == 2  # console + file, once
    logging.getLogger("tvr").info("only once")
    assert (tmp_path / "log.txt").read_text().count("only once") == 1
    assert capsys.readouterr().err.count("only once") == 1
    # Re-targeting to another folder moves the file handler.
    other = tmp_path / "other"
    setup_logging(str(other), rank=0)
    logging.getLogger("tvr").info("second folder")
    assert "second folder" in (other / "log.txt").read_text()
    assert "second folder" not in (tmp_path / "log.txt").read_text()


def test_other_ranks_warning_only_no_file(tmp_path, capsys):
    setup_logging(str(tmp_path), rank=1)
    logging.getLogger("tvr.engine").info("rank1 info")
    logging.getLogger("tvr.engine").warning("rank1 warning")
    err = capsys.readouterr().err
    assert "rank1 info" not in err and "rank1 warning" in err
    assert not (tmp_path / "log.txt").exists()


def test_no_double_print_when_root_configured(tmp_path, capsys):
    import sys
    root_handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(root_handler)
    setup_logging(str(tmp_path), rank=0)
    logging.getLogger("tvr").info("printed by root only")
    assert capsys.readouterr().err.count("printed by root only") == 1
    assert "printed by root only" in (tmp_path / "log.txt").read_text()


def test_caplog_still_sees_records(tmp_path, caplog):
    setup_logging(str(tmp_path), rank=0)
    with caplog.at_level(logging.INFO):
        logging.getLogger("tvr.utils.checkpoint").warning("visible to caplog")
    assert "visible to caplog" in caplog.text


def test_log_args_sorted_one_per_line(tmp_path):
    setup_logging(str(tmp_path), rank=0)
    log_args(argparse.Namespace(lr=1e-4, batch_size=128, output_dir="out", dsl=False))
    lines = [ln for ln in (tmp_path / "log.txt").read_text().splitlines() if ln.split(": ", 1)[-1].startswith("  ")]
    body = [ln.split(": ", 1)[1].strip() for ln in lines]
    assert body == ["batch_size: 128", "dsl: False", "lr: 0.0001", "output_dir: out"]
    log_args({"b": 2, "a": 1})
    assert "a: 1" in (tmp_path / "log.txt").read_text()


def test_a_library_warning_on_the_root_logger_is_logged_once_and_doubles_nothing(tmp_path, capsys):
    """open_clip warns through ``logging.warning``; with no root handler Python would install its own
    console handler and every later line of ours would be printed twice."""
    logging.getLogger().handlers[:] = []
    setup_logging(str(tmp_path), rank=0)
    logging.warning("No pretrained weights loaded")  # what open_clip does for random weights
    logging.getLogger("tvr.engine").info("after the library warning")
    err = capsys.readouterr().err
    text = (tmp_path / "log.txt").read_text()
    assert err.count("No pretrained weights loaded") == 1 and text.count("No pretrained weights loaded") == 1
    assert err.count("after the library warning") == 1 and text.count("after the library warning") == 1
