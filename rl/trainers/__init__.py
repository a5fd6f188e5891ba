"""One training loop (``Trainer``) and its iterations (first-order window, PODS or GPS epoch, collector batch); evaluation,
checkpoints and run logging."""

from rl.trainers.checkpoint import load_checkpoint, save_checkpoint
from rl.trainers.collector import CollectorConfig, CollectorTrainer
from rl.trainers.evaluation import EvalResult, evaluate, summarize, t_quantile_975
from rl.trainers.first_order import FirstOrderTrainer, TrainerConfig
from rl.trainers.gps import GPSTrainer
from rl.trainers.logging import RunLogger, plot_curves, read_metrics
from rl.trainers.loop import LoopConfig, NonFiniteError, Trainer, clip_grad_norm
from rl.trainers.pods import PODSConfig, PODSTrainer

__all__ = [
    "CollectorConfig", "CollectorTrainer", "EvalResult", "FirstOrderTrainer", "GPSTrainer", "LoopConfig", "NonFiniteError", "PODSConfig",
    "PODSTrainer", "RunLogger", "Trainer", "TrainerConfig", "clip_grad_norm", "evaluate", "load_checkpoint", "plot_curves",
    "read_metrics", "save_checkpoint", "summarize", "t_quantile_975",
]
