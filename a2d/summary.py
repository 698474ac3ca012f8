"""A training run's summary, `models/<system>/train.json`: written once by `train`, read by
`figures` and `tables`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from a2d.files import InputError, read_json, write_json


@dataclass
class EpochRecord:
    """One validation point: the end of an epoch, or of a partial one (stopped by max_steps, or
    resumed inside it: then the loss and speed figures cover only the batches since the resume)."""

    epoch: int
    step: int
    valid_bleu: float
    partial: bool
    train_nll: float  # per target token, mean over the epoch's micro-batches
    terms_per_token: dict[str, float]  # every logged loss term (a2d.losses.LossTerms.logged) but nll
    lr: float
    target_tokens_per_s: float


@dataclass
class TrainingSummary:
    system: str  # run name (per seed where the experiment has several)
    method: str  # as tables show it (a2d.config.SystemSpec.label)
    parameters: int
    model: dict  # the a2d.model.ModelConfig fields
    steps: int
    best_valid_bleu: float
    best_epoch: int
    history: list[EpochRecord]
    run_dir: str
    alignment: dict = field(default_factory=dict)  # AAM weights at the best epoch (a2d.train.alignment_weights)

    def write(self, path: str) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path: str) -> TrainingSummary:
        values = read_json(path)
        try:
            history = [EpochRecord(**record) for record in values.pop("history")]
            return cls(**values, history=history)
        except (KeyError, TypeError) as err:
            raise InputError(f"{path}: not a training summary written by this a2d ({err})") from None
