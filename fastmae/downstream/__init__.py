"""From pretraining to use: fine-tuning with few labels, linear probing, k-NN, embeddings
and export of a pretrained MAE encoder."""
from .classifier import VisionTransformer, load_encoder
from .embed import embed, read_embeddings
from .export import export
from .few_label import holdout_split, sample_few_labels
from .finetune import FinetuneConfig, FinetuneResult, finetune
from .knn import knn_evaluate, knn_run, knn_scores
from .linprobe import LinprobeConfig, linprobe
from .lr_decay import param_groups_lrd
from .pretrained import build_classifier, load_mae, load_pretrained

__all__ = ["VisionTransformer", "load_encoder", "build_classifier", "load_pretrained", "load_mae",
           "FinetuneConfig", "FinetuneResult", "finetune", "LinprobeConfig", "linprobe",
           "knn_scores", "knn_evaluate", "knn_run", "embed", "read_embeddings", "export",
           "sample_few_labels", "holdout_split", "param_groups_lrd"]
