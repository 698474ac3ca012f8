"""TensorBoard event files of one training run, written by rank 0 into its run directory
(`results/<experiment>/checkpoints/<system>/<run>/tensorboard`): every loss term per target token,
the learning rate and target tokens/s of each update, and the validation BLEU of each epoch, against
the update step. `tensorboard --logdir results/<experiment>/checkpoints` shows every system's runs."""

from __future__ import annotations


class TrainingBoard:
    """Scalars under `train/` (per update) and `valid/` (per epoch). A resumed run starts again at its
    checkpoint's step: events a killed attempt wrote after it are purged, so the curves do not fork.
    Without the tensorboard package (an older environment) training goes on without event files."""

    def __init__(self, log_dir, resumed_step: int, say=print):
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            say(f"no TensorBoard event files ({err}); `make venv` installs tensorboard")
            return
        # the checkpoint holds steps up to resumed_step: what came after it is purged
        self.writer = SummaryWriter(str(log_dir), purge_step=resumed_step + 1 if resumed_step else None, flush_secs=30)

    def update(self, step: int, terms_per_token: dict[str, float], lr: float, tokens_per_s: float) -> None:
        if self.writer is None:
            return
        for name, value in terms_per_token.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/target_tokens_per_s", tokens_per_s, step)

    def epoch(self, step: int, epoch: int, valid_bleu: float) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("valid/bleu", valid_bleu, step)
        self.writer.add_scalar("valid/epoch", epoch, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
