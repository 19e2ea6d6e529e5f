"""The everyday workflow from the shell: the original DRL-style commands verbatim, checkpoints that
describe themselves, recipes per dataset, and an output folder that is never silently destroyed."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

import main as main_module
from tvr.dataloaders.synthetic import main as synthetic_main
from tvr.options import build_parser, parse_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("R1", "R5", "R10", "MdR", "MnR")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic_main(["--output_dir", str(root), "--num_train", "16", "--num_test", "8", "--seed", "5"])
    return root


def data_args(dataset, output_dir):
    return ["--anno_path", str(dataset / "anns"), "--video_path", str(dataset / "videos"),
            "--output_dir", str(output_dir), "--workers", "0", "--batch_size_val", "8"]


def train_args(dataset, output_dir, *extra):
    return data_args(dataset, output_dir) + [
        "--do_train", "1", "--base_encoder", "scratch:tiny", "--max_words", "16", "--max_frames", "4",
        "--batch_size", "16", "--epochs", "1", "--lr", "1e-3", "--coef_lr", "1", "--n_display", "1", "--seed", "3",
        *extra]


def metrics(results):
    return {d: {k: float(results[d][k]) for k in METRICS} for d in ("t2v", "v2t")}


# ---- the original usage, verbatim -------------------------------------------------------------

def readme_original_commands():
    """The two commands of the README's 'original usage' block, each as one string."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    block = re.search(r"<!-- original-usage -->\s*```bash\n(.*?)```", text, re.S).group(1)
    commands = " ".join(line.rstrip("\\").strip() for line in block.splitlines() if not line.startswith("#"))
    return ["python -m" + c for c in commands.split("python -m")[1:]]


def adapt(command, dataset, output_dir, init_model=None):
    """Only what the original usage allows to change: paths, --base_encoder, --nproc_per_node; plus tiny sizes."""
    tiny = {"--batch_size": "16", "--batch_size_val": "8", "--epochs": "1", "--workers": "0",
            "--max_frames": "4", "--max_words": "16", "--base_encoder": "scratch:tiny",
            "--output_dir": str(output_dir), "--anno_path": str(dataset / "anns"),
            "--video_path": str(dataset / "videos"), "--init_model": str(init_model)}
    words = shlex.split(command.replace("--nproc_per_node=4", "--nproc_per_node=2"))
    return [tiny.get(words[i - 1], w) if i else w for i, w in enumerate(words)]


def run_cli(words):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(words, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_original_commands_run_verbatim(dataset, tmp_path):
    train_cmd, eval_cmd = readme_original_commands()
    assert "--do_train 1" in train_cmd and "--do_eval 1" in eval_cmd and "pytorch_model.bin" in eval_cmd
    out = tmp_path / "ckpt"
    run_cli(adapt(train_cmd, dataset, out))
    assert "world size 2" in (out / "log.txt").read_text()
    # --init_model takes any file name, e.g. the Hugging Face-style pytorch_model.bin.
    init = tmp_path / "pytorch_model.bin"
    shutil.copy(out / "best.pth", init)

    eval_dir = tmp_path / "eval"
    run_cli(adapt(eval_cmd, dataset, eval_dir, init_model=init))
    first = json.loads((eval_dir / "eval_results.json").read_text())
    assert first["checkpoint"] == str(init)
    # "Set --do_train 0, --do_eval 1": the same evaluation, spelled the DRL way.
    words = adapt(eval_cmd, dataset, tmp_path / "eval0", init_model=init)
    words[words.index("--do_eval"):words.index("--do_eval")] = ["--do_train", "0"]
    run_cli(words)
    second = json.loads((tmp_path / "eval0" / "eval_results.json").read_text())
    assert {d: second[d] for d in ("t2v", "v2t")} == {d: first[d] for d in ("t2v", "v2t")}


def test_every_switch_takes_bare_1_and_0():
    parser = build_parser()
    switches = [a.dest for a in parser._actions if a.type is not None and getattr(a.type, "__name__", "") == "_bool"]
    assert {"do_train", "do_eval", "resume", "overwrite", "grad_checkpointing", "dsl", "query_expansion",
            "dual_loss", "frame_jitter", "allow_decode_errors", "meanp"} <= set(switches)
    for dest in switches:
        flag = f"--{dest}"
        base = ["--anno_path", "a", "--video_path", "v", "--do_train" if dest == "do_eval" else "--do_eval"]
        assert getattr(parse_args(base + [flag]), dest) is True, flag
        assert getattr(parse_args(base + [flag, "1"]), dest) is True, flag
        assert getattr(parse_args(base + [flag, "0"]), dest) is False, flag
    assert parse_args(["--anno_path", "a", "--video_path", "v", "--do_train", "0", "--do_eval", "1"]).do_train is False
    with pytest.raises(SystemExit):
        parse_args(["--anno_path", "a", "--video_path", "v", "--do_train", "0", "--do_eval", "0"])


# ---- checkpoints that describe themselves -----------------------------------------------------

@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A model trained with non-default model flags."""
    out = tmp_path_factory.mktemp("nondefault")
    flags = ["--branches", "video", "--temporal_layers", "2", "--visual_expansion", "1", "--query_expansion", "0"]
    main_module.main(train_args(dataset, out, *flags))
    return out, flags


def evaluate_checkpoint(dataset, out_dir, checkpoint, *flags):
    return metrics(main_module.main(data_args(dataset, out_dir) + ["--do_eval", "1", "--init_model", str(checkpoint), *flags]))


def test_checkpoint_evaluated_with_default_flags_is_the_trained_model(dataset, trained, tmp_path):
    out, flags = trained
    ckpt = torch.load(out / "best.pth", weights_only=True)
    assert ckpt["format_version"] == 2
    assert ckpt["config"]["model"]["temporal_layers"] == 2 and ckpt["config"]["data"]["max_frames"] == 4
    with_defaults = evaluate_checkpoint(dataset, tmp_path / "a", out / "best.pth")
    with_flags = evaluate_checkpoint(dataset, tmp_path / "b", out / "best.pth", *flags, "--max_frames", "4", "--max_words", "16")
    assert with_defaults == with_flags
    saved = json.loads((tmp_path / "a" / "eval_results.json").read_text())
    assert saved["checkpoint"] == str(out / "best.pth") and {"torch", "cpu", "cpu_capability"} <= set(saved["versions"])


def test_contradicting_flags_are_refused_naming_both_values(dataset, trained, tmp_path):
    out, _ = trained
    with pytest.raises(ValueError, match=r"--temporal_layers 4 contradicts .*temporal_layers 2"):
        evaluate_checkpoint(dataset, tmp_path / "c", out / "best.pth", "--temporal_layers", "4")
    with pytest.raises(ValueError, match=r"--branches frame,video contradicts .*branches video"):
        evaluate_checkpoint(dataset, tmp_path / "c", out / "best.pth", "--branches", "frame,video")
    # More frames than the temporal encoder has positions for: refused with the reason; fewer is fine.
    with pytest.raises(ValueError, match=r"--max_frames 6: .*position embeddings for 4 frames"):
        evaluate_checkpoint(dataset, tmp_path / "c", out / "best.pth", "--max_frames", "6")
    evaluate_checkpoint(dataset, tmp_path / "d", out / "best.pth", "--max_frames", "3")


def test_checkpoints_without_a_configuration_still_load(dataset, trained, tmp_path):
    out, flags = trained
    new = torch.load(out / "best.pth", weights_only=True)
    reference = evaluate_checkpoint(dataset, tmp_path / "ref", out / "best.pth")
    # The previous format: the flag namespace as a dict under "args", the interaction naming the baseline.
    args = vars(parse_args(train_args(dataset, out, *flags)))
    args.update(interaction="mms", base_encoder="scratch:tiny")
    for key in ("meanp", "query_sot", "temporal_input", "loss_lr", "overwrite", "keep_epochs"):
        args.pop(key)
    torch.save({"model": new["model"], "epoch": 0, "args": args}, tmp_path / "old.pth")
    assert evaluate_checkpoint(dataset, tmp_path / "old", tmp_path / "old.pth") == reference
    # A bare state dict: the flags describe the model, and the weights load strictly.
    torch.save(new["model"], tmp_path / "bare.pth")
    common = ["--base_encoder", "scratch:tiny", "--max_frames", "4", "--max_words", "16"]
    assert evaluate_checkpoint(dataset, tmp_path / "bare", tmp_path / "bare.pth", *common, *flags) == reference
    with pytest.raises(Exception, match=r"missing key.*unexpected key"):
        evaluate_checkpoint(dataset, tmp_path / "bare2", tmp_path / "bare.pth", *common)


def test_resume_compares_every_setting(dataset, trained):
    out, flags = trained
    before = (out / "last.pth").read_bytes()
    # Neither flag was on the old hand-kept list of settings to compare.
    for extra, message in ((["--loss_lr", "0.5"], r"--loss_lr None in the checkpoint, 0.5 now"),
                           (["--temporal_input", "raw"], r"--temporal_input normalized in the checkpoint, raw now")):
        with pytest.raises(ValueError, match=message):
            main_module.main(train_args(dataset, out, *flags, "--resume", "1", *extra))
    assert (out / "last.pth").read_bytes() == before


# ---- recipes ------------------------------------------------------------------------------------

RECIPE_VARIABLES = ("DATATYPE", "BASE_ENCODER", "MAX_FRAMES", "MAX_WORDS", "QUERY_EXPANSION", "BATCH_SIZE", "EPOCHS", "LR",
                    "COEF_LR", "LOSS")


def recipe_values(name):
    script = f'DATASET={name}; source scripts/common.sh; ' + "; ".join(f'echo "{v}=${{{v}}}"' for v in RECIPE_VARIABLES)
    env = {k: v for k, v in os.environ.items() if k not in RECIPE_VARIABLES}
    out = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def readme_recipe_table():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    table = re.search(r"<!-- recipes -->\n(.*?)\n\n", text, re.S).group(1).splitlines()
    header = [c.strip(" `") for c in table[0].strip("|").split("|")]
    rows = {}
    for line in table[2:]:
        cells = [c.strip(" `") for c in line.strip("|").split("|")]
        rows[cells[0].split("`")[0]] = dict(zip(header[1:], cells[1:]))  # "`msrvtt` (notes)" -> msrvtt
    return rows


def test_every_recipe_sets_what_the_readme_says():
    table = readme_recipe_table()
    recipes = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".sh"))
    assert sorted(table) == recipes
    for name in recipes:
        values = recipe_values(name)
        assert {k: values[k] for k in table[name]} == table[name], name


def test_main_defaults_are_the_msrvtt_recipe():
    values = recipe_values("msrvtt")
    defaults = {a.dest: a.default for a in build_parser()._actions}
    for var in RECIPE_VARIABLES:
        assert str(defaults[var.lower()]) == values[var] or float(defaults[var.lower()]) == float(values[var]), var


def test_environment_overrides_a_recipe():
    env = dict(os.environ, MAX_FRAMES="7")
    out = subprocess.run(["bash", "-c", 'DATASET=activitynet; source scripts/common.sh; echo "$MAX_FRAMES $MAX_WORDS"'],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["7", "64"]


# ---- a run is never lost --------------------------------------------------------------------------

def test_training_into_a_finished_run_is_refused_until_overwrite(dataset, trained, tmp_path):
    out, flags = trained
    kept = {name: (out / name).read_bytes() for name in ("best.pth", "last.pth")}
    with pytest.raises(FileExistsError, match=r"--resume.*--output_dir.*--overwrite"):
        main_module.main(train_args(dataset, out, *flags))
    assert all((out / n).read_bytes() == b for n, b in kept.items())

    fresh = tmp_path / "run"
    main_module.main(train_args(dataset, fresh, "--keep_epochs", "1"))
    (fresh / "epoch7.pth").write_bytes(b"an old run's epoch")
    previous = {p.name: p.read_bytes() for p in fresh.iterdir()}

    # An --overwrite run that stops at a start-up check (here a mistyped encoder) deletes nothing.
    with pytest.raises(ValueError, match="no-such-encoder"):
        main_module.main(train_args(dataset, fresh, "--overwrite", "1", "--base_encoder", "scratch:no-such-encoder"))
    assert all((fresh / name).read_bytes() == data for name, data in previous.items() if name != "log.txt")
    assert (fresh / "log.txt").read_bytes().startswith(previous["log.txt"])  # the failure is appended

    main_module.main(train_args(dataset, fresh, "--overwrite", "1", "--keep_epochs", "1"))
    assert not (fresh / "epoch7.pth").exists()  # the old run's files were cleared, not mixed in
    assert sorted(p.name for p in fresh.glob("epoch*.pth")) == ["epoch0.pth"]
    log = (fresh / "log.txt").read_text()
    assert log.count("Effective arguments:") == 1 and "--overwrite: deleted the previous run's files" in log


def test_train_sh_refuses_an_existing_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"x")
    env = dict(os.environ, OUTPUT_DIR=str(out))
    proc = subprocess.run(["bash", "train.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "RESUME=1" in proc.stderr and "OVERWRITE=1" in proc.stderr
    assert (out / "last.pth").read_bytes() == b"x"


def train_sh_main_args(tmp_path, **env_vars):
    """The flags train.sh gives main.py: ``python`` on the PATH is a stub that records them."""
    stub = tmp_path / "bin"
    stub.mkdir(parents=True)
    (stub / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n'
                                 'mkdir -p "$OUTPUT_DIR" && echo {} > "$OUTPUT_DIR/eval_results.json"\n')
    (stub / "python").chmod(0o755)
    anns = tmp_path / "anns"
    anns.mkdir()
    (anns / "MSRVTT_data.json").write_text("{}")  # the synthetic set "exists": nothing is generated
    env = dict(os.environ, PATH=f"{stub}:{os.environ['PATH']}", ARGS_FILE=str(tmp_path / "args"),
               OUTPUT_DIR=str(tmp_path / "run"), ANNO_PATH=str(anns), **env_vars)
    subprocess.run(["bash", "train.sh"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    args = (tmp_path / "args").read_text().split()
    return dict(zip(args, args[1:]))


@pytest.mark.parametrize("recipe, expected", [("synthetic", "0"), ("msrvtt", "1")])
def test_train_sh_passes_the_recipes_query_expansion(tmp_path, recipe, expected):
    assert train_sh_main_args(tmp_path, DATASET=recipe)["--query_expansion"] == expected
    assert train_sh_main_args(tmp_path / "env", DATASET=recipe, QUERY_EXPANSION="7")["--query_expansion"] == "7"


def test_stale_temporary_files_are_removed_only_when_their_writer_is_gone(dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".last.pth.{dead.pid}.0123abcd.tmp"
    live = out / f".last.pth.{os.getpid()}.89abcdef.tmp"  # a writer that is still running
    foreign = out / ".notes.tmp"  # not our naming pattern
    for p in (stale, live, foreign):
        p.write_bytes(b"partial")
    main_module.main(train_args(dataset, out))
    assert not stale.exists() and live.exists() and foreign.exists()


def test_batch_of_one_is_refused(dataset, tmp_path):
    with pytest.raises(SystemExit):
        parse_args(train_args(dataset, tmp_path, "--batch_size", "1"))


def test_a_fatal_error_is_one_line_in_log_txt(dataset, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError):
        main_module.main(train_args(dataset, out, "--init_model", str(tmp_path / "missing.pth")))
    log = (out / "log.txt").read_text()
    line = next(l for l in log.splitlines() if "fatal" in l)
    assert "missing.pth" in line and "Traceback" in log


@pytest.mark.parametrize("cache_frames", ["0", "1"])  # 1: the frame cache's own decode finds it
def test_an_undecodable_test_video_stops_the_run_before_training(dataset, tmp_path, cache_frames):
    broken = tmp_path / "data"
    shutil.copytree(dataset, broken, symlinks=True)
    first_test_row = (broken / "anns" / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[1]
    victim = next((broken / "videos").glob(first_test_row.split(",")[2] + ".*"))
    victim.write_bytes(victim.read_bytes()[:300])
    out = tmp_path / "run"
    args = train_args(broken, out, "--do_eval", "1", "--cache_frames", cache_frames)
    with pytest.raises(RuntimeError, match=rf"(?s){victim.name}.*--allow_decode_errors 1"):
        main_module.main(args)
    log = (out / "log.txt").read_text()
    assert "fatal" in log and victim.name in log and " step " not in log  # no training step ran
    assert not list(out.glob("*.pth"))
    main_module.main(args + ["--allow_decode_errors", "1"])  # scored as never retrieved instead
    assert victim.stem in json.loads((out / "eval_results.json").read_text())["failed_videos"]


def test_pick_examples_hand_computed():
    from tvr.engine.examples import pick_examples

    sim = torch.tensor([[0.9, 0.1, 0.2],   # hit, margin 0.7
                        [0.5, 0.4, 0.3],   # miss: ground truth ranked 2nd
                        [0.8, 0.7, 0.1],   # miss: ranked 3rd (worst)
                        [0.2, 0.1, 0.6]])  # hit, margin 0.4
    q2v = torch.tensor([0, 1, 2, 2])
    assert pick_examples(sim, q2v, 1) == [("hit", 0), ("miss", 2)]
    assert pick_examples(sim, q2v, 5) == [("hit", 0), ("hit", 3), ("miss", 2), ("miss", 1)]


def test_save_examples_draws_hits_and_misses(dataset, trained, tmp_path):
    out, _ = trained
    evaluate_checkpoint(dataset, tmp_path / "ex", out / "best.pth", "--save_examples", "1")
    pictures = sorted(p.name for p in (tmp_path / "ex" / "examples").glob("*.png"))
    assert [p.split("_")[0] for p in pictures] in (["hit", "miss"], ["hit"], ["miss"])
    assert all((tmp_path / "ex" / "examples" / p).stat().st_size > 10_000 for p in pictures)
