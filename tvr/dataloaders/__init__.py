"""Video-text data: frame loading, datasets behind `--datatype`, the synthetic dataset.

Public API:
    DataConfig                         configuration (config.py)
    DATASETS                           registry: datatype -> annotation reader class
    build_train_dataset(cfg)           torch Dataset of training pairs
    build_eval_dataset(cfg, split)     EvalData(texts, videos, query_to_video, video_ids, ...)
    check_annotation_files(cfg, splits) fail fast on missing annotation files
    VideoDecodeError                   raised (naming the file) when no backend can decode a video
"""
from .annotations import DATASETS, AnnotationError, AnnotationFilesMissing
from .base import (EvalData, build_eval_dataset, build_train_dataset, check_annotation_files)
from .config import DataConfig
from .video_reader import VideoDecodeError, sample_frame_indices

__all__ = [
    "DATASETS", "AnnotationError", "AnnotationFilesMissing", "DataConfig", "EvalData",
    "VideoDecodeError", "build_eval_dataset", "build_train_dataset", "check_annotation_files",
    "sample_frame_indices",
]
