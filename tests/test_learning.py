"""The whole training run learns: on videos whose captions name their colours, the training loss
falls and test R@1 ends far above chance and above the untrained model's. A run that computes
everything but never changes the weights (gradients dropped, optimizer step a no-op, captions
paired with the wrong videos) fails here, whatever it writes.

Also: best.pth holds the epoch with the best validation R@1, and --do_eval after training tests it.
"""
import json
import re

import pytest
import torch

import main as main_module

from .colour_videos import make_dataset

NUM_TEST = 16  # chance R@1 = 1/16 = 6.25 %
EPOCHS = 5  # 56 training pairs / batch 8 = 7 steps per epoch, 35 steps in all


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    make_dataset(root, num_test=NUM_TEST, seed=0)
    return root


def run_args(data, out, *extra):
    return [
        "--anno_path", str(data / "anns"), "--video_path", str(data / "videos"), "--output_dir", str(out),
        "--base_encoder", "scratch:tiny", "--max_words", "8", "--max_frames", "2", "--video_framerate", "1",
        "--batch_size", "8", "--batch_size_val", "16", "--workers", "0", "--n_display", "1",
        "--lr", "5e-4", "--coef_lr", "1", "--loss", "softmax", "--seed", "3", *extra,
    ]


def logged_losses(log: str):
    """Training loss of every logged step, in step order."""
    return [float(m.group(2)) for m in re.finditer(r"step (\d+)/\d+ loss ([0-9.]+)", log)]


def logged_val_r1(log: str):
    """{epoch: validation text-to-video R@1} as the log prints it."""
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"epoch (\d+) val\b.*t2v: R@1 ([0-9.]+)", log)}


@pytest.fixture(scope="module")
def untrained_r1(colour_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("untrained")
    main_module.main(run_args(colour_set, out, "--do_eval"))
    return json.loads((out / "eval_results.json").read_text())["t2v"]["R1"]


@pytest.fixture(scope="module")
def trained(colour_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    main_module.main(run_args(colour_set, out, "--do_train", "--do_eval", "--epochs", str(EPOCHS),
                              "--keep_epochs", str(EPOCHS)))
    return out


def test_training_loss_falls(trained):
    losses = logged_losses((trained / "log.txt").read_text())
    assert len(losses) == EPOCHS * 7
    start, end = sum(losses[:3]) / 3, sum(losses[-7:]) / 7  # first steps vs the last epoch
    # Softmax over 8 candidates, two branches: an untrained model sits at 2 ln 8 = 4.16.
    assert start > 3.5, losses
    assert end < 0.6 * start, losses


def test_test_recall_far_above_chance_and_the_untrained_model(trained, untrained_r1):
    r1 = json.loads((trained / "eval_results.json").read_text())["t2v"]["R1"]
    chance = 100.0 / NUM_TEST
    assert untrained_r1 < 4 * chance  # a random model does not solve the task by itself
    assert r1 >= 6 * chance, r1  # measured 62-88 % over seeds 1-4 (35 steps)
    assert r1 >= untrained_r1 + 25, (r1, untrained_r1)


def test_best_checkpoint_is_the_best_validation_epoch(trained):
    """best.pth = the first epoch with the highest validation R@1 (log, history and weights agree),
    and the test after training evaluates it (here val falls back to the test split, so the test R@1
    equals that epoch's validation R@1)."""
    log = (trained / "log.txt").read_text()
    logged = logged_val_r1(log)
    assert sorted(logged) == list(range(EPOCHS)), logged
    history = torch.load(trained / "last.pth", weights_only=True)["state"]["history"]
    exact = {h["epoch"]: h["val_t2v_R1"] for h in history}
    assert sorted(exact) == list(range(EPOCHS))
    for epoch, r1 in exact.items():
        assert logged[epoch] == pytest.approx(r1, abs=0.051)  # the log rounds to 0.1
    best_r1 = max(exact.values())
    best_epoch = min(e for e, r in exact.items() if r == best_r1)  # the first, on a tie

    best = torch.load(trained / "best.pth", weights_only=True)
    assert best["epoch"] == best_epoch, (best["epoch"], exact)
    assert best["val"]["t2v"]["R1"] == pytest.approx(best_r1)
    epoch_weights = torch.load(trained / f"epoch{best_epoch}.pth", weights_only=True)["model"]
    assert best["model"].keys() == epoch_weights.keys()
    for name, value in best["model"].items():
        assert torch.equal(value, epoch_weights[name]), name

    results = json.loads((trained / "eval_results.json").read_text())
    assert results["checkpoint"].endswith("best.pth")
    assert results["t2v"]["R1"] == pytest.approx(best_r1)
