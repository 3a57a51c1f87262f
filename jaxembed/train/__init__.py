"""Training: `run.setup` builds and checks a run, `state` creates or restores its state,
`step` is the pure train step, `evaluation` scores the grid, `loop` runs the job."""

from jaxembed.train.evaluation import evaluate
from jaxembed.train.loop import Result, train_and_evaluate
from jaxembed.train.run import Run, setup
from jaxembed.train.state import TrainState, abstract_state, new_state
from jaxembed.train.step import compile_train_step, train_step
