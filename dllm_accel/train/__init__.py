"""Training of the tiny masked-diffusion LM shipped in ``checkpoints/tiny-llada``."""

from ..synthetic_tasks import TASKS, Sample, SyntheticTask, held_out_samples, task_named, training_sample
from .checkpoint import llada_config, write_llada_checkpoint
from .evaluate import TaskResult, evaluate_samples, reference_settings
from .objective import add_mask_noise, masked_diffusion_loss
from .tokenizer import build_core_tokenizer, save_tokenizer
from .trainer import TrainConfig, init_model, tiny_spec, train

__all__ = [
    "TASKS",
    "Sample",
    "SyntheticTask",
    "TaskResult",
    "TrainConfig",
    "add_mask_noise",
    "build_core_tokenizer",
    "evaluate_samples",
    "held_out_samples",
    "init_model",
    "llada_config",
    "masked_diffusion_loss",
    "reference_settings",
    "save_tokenizer",
    "task_named",
    "tiny_spec",
    "train",
    "training_sample",
    "write_llada_checkpoint",
]
