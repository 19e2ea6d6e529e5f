"""Command-line flags: defined once here, shown with their defaults by ``main.py --help``.

Library code never sees the argparse namespace: ``model_config`` here and ``DataConfig.from_args`` turn it into
the small config objects the model and the datasets are built from.
"""
import argparse
import math
import os

from .dataloaders import DATASETS
from .models.modeling import BRANCHES, INTERACTIONS, ModelConfig


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Video-ColBERT text-to-video retrieval: training and evaluation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("run")
    g.add_argument("--do_train", action="store_true", help="train, evaluating on the validation split each epoch")
    g.add_argument("--do_eval", action="store_true", help="evaluate on the test split")
    g.add_argument("--output_dir", default="outputs/run", help="log, checkpoints and eval_results.json go here")
    g.add_argument("--seed", type=int, default=42, help="random seed (Python, NumPy, torch, data order)")
    g.add_argument("--workers", type=int, default=4, help="data-loading worker processes per rank")
    g.add_argument("--n_display", type=int, default=50, help="log training statistics every N steps")
    g.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pth if it exists")
    g.add_argument("--init_model", default=None, help="checkpoint whose model weights initialise the model")
    g.add_argument("--checkpoint_every", type=int, default=500, help="also write last.pth every N steps (0: per epoch only)")
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="autocast precision on CUDA (the CPU always runs fp32)")
    g.add_argument("--grad_checkpointing", action="store_true", help="recompute activations in backward to save memory")
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
    g.add_argument("--frame_jitter", type=_bool, default=False, help="training only: a random frame inside each sampled segment")
    g.add_argument("--drop_missing_videos", type=_bool, default=False, help="drop pairs whose video file is missing instead of stopping")
    g.add_argument("--allow_decode_errors", type=_bool, default=False, help="evaluation: score undecodable videos as never retrieved and report them instead of stopping")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=5, help="training epochs")
    g.add_argument("--batch_size", type=int, default=128, help="GLOBAL training batch (split across ranks)")
    g.add_argument("--batch_size_val", type=int, default=64, help="GLOBAL evaluation batch (split across ranks)")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate of the new modules")
    g.add_argument("--coef_lr", type=float, default=1e-3, help="CLIP's learning rate is lr * coef_lr")
    g.add_argument("--weight_decay", type=float, default=0.2, help="AdamW weight decay (not on biases, norms, embeddings, loss temperatures)")
    g.add_argument("--warmup_proportion", type=float, default=0.1, help="fraction of steps of linear warm-up before the cosine decay")
    g.add_argument("--grad_clip", type=float, default=1.0, help="gradient-norm clipping (0: off)")

    g = p.add_argument_group("model")
    g.add_argument("--base_encoder", default="ViT-B/32", help="OpenAI CLIP name, checkpoint path, or scratch:<config> (e.g. scratch:tiny)")
    g.add_argument("--clip_cache_dir", default=None, help="where OpenAI checkpoints are downloaded (default ~/.cache/clip)")
    g.add_argument("--interaction", choices=INTERACTIONS, default="mms", help="mms: MeanMaxSim; maxsim: ColBERT's sum; meanp: CLIP4Clip mean-pooling baseline")
    g.add_argument("--branches", type=_branches, default=BRANCHES, help="frame, video or both (frame,video)")
    g.add_argument("--query_expansion", type=_bool, default=True, help="padded query positions count as query tokens")
    g.add_argument("--visual_expansion", type=int, default=2, help="learned tokens appended to the temporal encoder's input")
    g.add_argument("--temporal_layers", type=int, default=4, help="temporal encoder depth (initialised from CLIP's first text blocks)")
    g.add_argument("--loss", choices=("sigmoid", "softmax"), default="sigmoid", help="sigmoid: SigLIP-style; softmax: symmetric InfoNCE")
    g.add_argument("--dual_loss", type=_bool, default=True, help="one loss per branch (0: one loss on the summed score)")
    g.add_argument("--init_temperature", type=float, default=10.0, help="initial sigmoid-loss temperature exp(t) of each branch")
    g.add_argument("--init_bias", type=float, default=-10.0, help="initial sigmoid-loss bias of each branch")
    g.add_argument("--sim_chunk_size", type=int, default=256, help="videos scored per chunk at evaluation (bounds memory)")
    g.add_argument("--dsl", action="store_true", help="dual-softmax re-ranking of the similarity matrix at evaluation")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if "LOCAL_RANK" in os.environ:  # torchrun / torch.distributed.launch
        args.local_rank = int(os.environ["LOCAL_RANK"])
    if not (args.do_train or args.do_eval):
        parser.error("nothing to do: pass --do_train and/or --do_eval")
    for name in ("batch_size", "batch_size_val", "epochs", "max_words", "max_frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.max_words < 3:
        parser.error("--max_words must leave room for SOT, one token and EOT (>= 3)")
    if args.init_temperature <= 0:
        parser.error("--init_temperature must be > 0")
    return args


def model_config(args) -> ModelConfig:
    return ModelConfig(
        interaction=args.interaction,
        branches=args.branches,
        query_expansion=args.query_expansion,
        visual_expansion=args.visual_expansion,
        temporal_layers=args.temporal_layers,
        max_frames=args.max_frames,
        loss=args.loss,
        dual_loss=args.dual_loss,
        init_log_temperature=math.log(args.init_temperature),
        init_bias=args.init_bias,
        sim_chunk_size=args.sim_chunk_size,
    )
