"""Command-line flags: defined once here, shown with their defaults by ``main.py --help``.

Library code never sees the argparse namespace: ``tvr.config.RunConfig.from_args`` turns it into the
small config objects (model, data, optimisation) that the model, the datasets and the trainer are built
from. Defaults are the MSR-VTT recipe (``configs/msrvtt.sh``); ``train.sh`` passes every recipe value
explicitly, so ``python main.py`` and ``bash train.sh`` never disagree silently.
"""
import argparse
import os

from .dataloaders import DATASETS
from .models.modeling import BRANCHES, INTERACTIONS, TEMPORAL_INPUTS


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0 or 1, got {value!r}")


def _branches(value: str):
    names = tuple(b for b in value.replace("+", ",").split(",") if b)
    if value == "both":
        names = BRANCHES
    if not names or any(b not in BRANCHES for b in names):
        raise argparse.ArgumentTypeError(f"--branches takes frame, video or both (frame,video); got {value!r}")
    return names


def _add_switch(group, name: str, help: str, default: bool = False) -> None:
    """A boolean flag in DRL's spelling: ``--name``, ``--name 1`` and ``--name 0`` all work."""
    group.add_argument(name, type=_bool, nargs="?", const=True, default=default, metavar="0|1", help=help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Video-ColBERT text-to-video retrieval: training and evaluation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("run")
    _add_switch(g, "--do_train", "train, evaluating on the validation split each epoch")
    _add_switch(g, "--do_eval", "evaluate on the test split (after training: the best checkpoint)")
    g.add_argument("--output_dir", default="outputs/run", help="log, checkpoints and eval_results.json go here")
    g.add_argument("--seed", type=int, default=42, help="random seed (Python, NumPy, torch, data order)")
    g.add_argument("--workers", type=int, default=4, help="data-loading worker processes per rank")
    g.add_argument("--n_display", type=int, default=50, help="log training statistics every N steps")
    _add_switch(g, "--resume", "continue from OUTPUT_DIR/last.pth if it exists")
    _add_switch(g, "--overwrite", "train into an OUTPUT_DIR that holds another run, deleting that run's files once this run has passed its start-up checks")
    g.add_argument("--init_model", default=None, help="checkpoint (.pth, .pt, .bin) whose model and configuration initialise the model")
    g.add_argument("--checkpoint_every", type=int, default=500, help="also write last.pth every N steps (0: per epoch only)")
    g.add_argument("--keep_epochs", type=int, default=0, help="keep the newest N per-epoch checkpoints epochN.pth (best.pth and last.pth are always kept)")
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="autocast precision on CUDA (the CPU always runs fp32)")
    _add_switch(g, "--grad_checkpointing", "recompute activations in backward to save memory")
    g.add_argument("--local_rank", "--local-rank", type=int, default=0, help="set by torch.distributed.launch; the LOCAL_RANK environment variable wins")

    g = p.add_argument_group("data")
    g.add_argument("--datatype", default="msrvtt", choices=sorted(DATASETS), help="dataset annotation format")
    g.add_argument("--anno_path", required=True, help="annotation folder (layout per dataset in README.md)")
    g.add_argument("--video_path", required=True, help="video folder")
    g.add_argument("--train_list", default="9k", choices=("9k", "7k"), help="MSR-VTT training list")
    g.add_argument("--max_words", type=int, default=32, help="query length in tokens, SOT and EOT included")
    g.add_argument("--max_frames", type=int, default=12, help="frames sampled per video")
    g.add_argument("--video_framerate", type=float, default=1.0, help="frames per second sampled from each video")
    g.add_argument("--slice_framepos", type=int, choices=(0, 1, 2), default=2, help="with too many frames keep the 0 head, 1 tail, 2 uniform sample")
    _add_switch(g, "--frame_jitter", "training only: a random frame inside each sampled segment")
    _add_switch(g, "--drop_missing_videos", "drop pairs whose video file is missing instead of stopping")
    _add_switch(g, "--allow_decode_errors", "evaluation: score undecodable videos as never retrieved and report them instead of stopping")
    _add_switch(g, "--decode_resize", "decode MP4/MOV videos directly at the resize size when that at least halves the pixels (0: always full-size frames, then resize)", default=True)
    _add_switch(g, "--cache_frames", "decode each video (into shared memory) and tokenize each caption once per run instead of once per epoch (small datasets)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=5, help="training epochs")
    g.add_argument("--batch_size", type=int, default=128, help="GLOBAL training batch (split across ranks)")
    g.add_argument("--batch_size_val", type=int, default=128, help="GLOBAL evaluation batch (split across ranks)")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate of the new modules")
    g.add_argument("--coef_lr", type=float, default=1e-3, help="the encoder's learning rate is lr * coef_lr")
    g.add_argument("--loss_lr", type=float, default=None, help="learning rate of the loss's temperatures and biases (no weight decay); default: --lr")
    g.add_argument("--weight_decay", type=float, default=0.2, help="AdamW weight decay (not on biases, norms, embeddings, loss temperatures)")
    g.add_argument("--warmup_proportion", type=float, default=0.1, help="fraction of steps of linear warm-up before the cosine decay")
    g.add_argument("--grad_clip", type=float, default=1.0, help="gradient-norm clipping (0: off)")

    g = p.add_argument_group("model")
    g.add_argument("--base_encoder", default="ViT-B/32", help="OpenAI CLIP name, checkpoint path, scratch:<config> (e.g. scratch:tiny), or open_clip:<model> (e.g. open_clip:ViT-B-16-SigLIP)")
    g.add_argument("--pretrained", default=None, help="open_clip weights: a pretrained tag (e.g. webli; downloaded and cached by open_clip), a weights file or a folder holding one; unset: random weights")
    g.add_argument("--tokenizer", default=None, help="open_clip models with a sentencepiece tokenizer (SigLIP): folder with spiece.model/tokenizer.model and special_tokens_map.json (default: beside the --pretrained file)")
    g.add_argument("--clip_cache_dir", default=None, help="where OpenAI checkpoints are downloaded (default ~/.cache/clip)")
    g.add_argument("--interaction", choices=INTERACTIONS, default="mms", help="late-interaction scoring: mms (MeanMaxSim) or maxsim (ColBERT's sum)")
    _add_switch(g, "--meanp", "CLIP4Clip mean-pooling baseline instead of late interaction (EOT token vs mean frame)")
    g.add_argument("--branches", type=_branches, default=BRANCHES, help="frame, video or both (frame,video)")
    _add_switch(g, "--query_expansion", "padded query positions count as query tokens", default=True)
    _add_switch(g, "--query_sot", "<|startoftext|> counts as a query token (its output is the same for every query)", default=True)
    g.add_argument("--visual_expansion", type=int, default=2, help="learned tokens appended to the temporal encoder's input")
    g.add_argument("--temporal_layers", type=int, default=4, help="temporal encoder depth (initialised from the encoder's first text blocks)")
    g.add_argument("--temporal_input", choices=TEMPORAL_INPUTS, default="normalized", help="temporal encoder input: L2-normalised frame tokens or the raw projected CLS tokens")
    g.add_argument("--loss", choices=("sigmoid", "softmax"), default="sigmoid", help="sigmoid: SigLIP-style; softmax: symmetric InfoNCE")
    _add_switch(g, "--dual_loss", "one loss per branch (0: one loss on the summed score)", default=True)
    g.add_argument("--init_temperature", type=float, default=10.0, help="initial sigmoid-loss temperature exp(t) of each branch")
    g.add_argument("--init_bias", type=float, default=-10.0, help="initial sigmoid-loss bias of each branch")
    g.add_argument("--sim_chunk_size", type=int, default=256, help="videos scored per chunk at evaluation (bounds memory)")
    _add_switch(g, "--dsl", "dual-softmax re-ranking of the similarity matrix at evaluation")
    g.add_argument("--save_examples", type=int, default=0, help="after testing, draw N best hits and N worst misses as explanation pictures in OUTPUT_DIR/examples")
    return p


def explicit_flags(argv=None) -> frozenset:
    """Destinations of the flags the user actually typed (not left at their defaults).

    A checkpoint's configuration wins over a default but never over a flag typed on purpose:
    this is how the two are told apart.
    """
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    seen, _ = parser.parse_known_args(argv)
    return frozenset(vars(seen))


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if "LOCAL_RANK" in os.environ:  # torchrun / torch.distributed.launch
        args.local_rank = int(os.environ["LOCAL_RANK"])
    if not (args.do_train or args.do_eval):
        parser.error("nothing to do: pass --do_train 1 and/or --do_eval 1")
    for name in ("batch_size", "batch_size_val", "epochs", "max_words", "max_frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.max_words < 3:
        parser.error("--max_words must leave room for SOT, one token and EOT (>= 3)")
    if args.init_temperature <= 0:
        parser.error("--init_temperature must be > 0")
    if args.keep_epochs < 0:
        parser.error("--keep_epochs must be >= 0")
    if args.do_train and args.batch_size < 2:
        parser.error("--batch_size must be >= 2 for contrastive training: a batch of 1 has no negatives and its loss is a constant")
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite contradict each other: continue the run in --output_dir, or replace it")
    return args
