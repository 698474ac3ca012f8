"""The run directory: its name (digest), its step log, which checkpoint a run resumes from."""

from a2d.config import MethodConfig, SystemSpec, TrainingConfig
from a2d.run import STEPS_HEADER, RunDirectory, run_digest


def spec(**training) -> SystemSpec:
    return SystemSpec("sys", {"d_model": 16}, MethodConfig(), TrainingConfig(**training))


def test_run_digest_ignores_bookkeeping_but_not_training_settings(tiny_corpus):
    inputs = [str(tiny_corpus["train"])]
    base = run_digest(spec(), inputs, 1)
    assert run_digest(spec(max_epochs=9, save_every_steps=7, keep_checkpoints=5, patience=3), inputs, 1) == base
    assert run_digest(spec(lr=1e-4), inputs, 1) != base
    assert run_digest(spec(), inputs + [str(tiny_corpus["valid"])], 1) != base
    # the update size it resolves to, not how it was written: batches_per_update 2 is the default 0 on 2 processes
    assert run_digest(spec(batches_per_update=2), inputs, 2) == run_digest(spec(), inputs, 2) != base



def test_the_step_log_restarts_at_the_resumed_step(tmp_path):
    (tmp_path / "inputs").write_text("x")
    run = RunDirectory(str(tmp_path / "checkpoints"), spec(), [str(tmp_path / "inputs")], 1)
    assert run.path.parent == tmp_path / "checkpoints" and len(run.path.name) == 12
    assert run.checkpoint_to_resume(1, print) is None and run.path.is_dir()  # nothing to resume yet
    run.restart_step_log(0)
    for step in (1, 2, 3):
        run.log_step(step, 1.0 / step, 1e-3, 100, 0.5)
    run.restart_step_log(2)  # the process that trained step 3 died before saving it
    assert run.steps.read_text().splitlines() == [STEPS_HEADER, "1\t1.000000\t0.001\t100\t0.5000",
                                                  "2\t0.500000\t0.001\t100\t0.5000"]
