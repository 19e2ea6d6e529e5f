"""Video-text data: frame loading, datasets behind `--datatype`, the synthetic dataset.

Public API:
    DataConfig                         configuration (config.py)
    DATASETS                           registry: datatype -> annotation reader class
    build_train_dataset(cfg)           torch Dataset of training pairs
    build_eval_dataset(cfg, split)     EvalData(texts, videos, query_to_video, video_ids, ...)
    check_annotation_files(cfg, splits) fail fast on missing annotation files
    VideoDecodeError                   raised (naming the file) when no backend can decode a video
"""
import importlib

# Public name -> the submodule defining it. Imported on first use (PEP 562), so that a submodule run
# on its own, such as the synthetic-dataset generator (NumPy and OpenCV only), does not first pay the
# seconds that torch and torchvision take to import.
_PUBLIC = {
    "DATASETS": ".annotations", "AnnotationError": ".annotations", "AnnotationFilesMissing": ".annotations",
    "EvalData": ".base", "build_eval_dataset": ".base", "build_train_dataset": ".base",
    "check_annotation_files": ".base", "DataConfig": ".config",
    "VideoDecodeError": ".video_reader", "sample_frame_indices": ".video_reader",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value
