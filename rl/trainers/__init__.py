"""Training loops, evaluation, checkpoints and run logging."""

from rl.trainers.checkpoint import load_checkpoint, save_checkpoint
from rl.trainers.evaluation import EvalResult, evaluate, summarize, t_quantile_975
from rl.trainers.first_order import FirstOrderTrainer, NonFiniteError, TrainerConfig
from rl.trainers.logging import RunLogger, plot_curves, read_metrics
from rl.trainers.pods import PODSTrainer

__all__ = [
    "EvalResult", "FirstOrderTrainer", "NonFiniteError", "PODSTrainer", "RunLogger", "TrainerConfig", "evaluate", "load_checkpoint",
    "plot_curves", "read_metrics", "save_checkpoint", "summarize", "t_quantile_975",
]
