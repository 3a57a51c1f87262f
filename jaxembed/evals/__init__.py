"""Evaluation: STS, retrieval and the (layer x dim) grid."""

from jaxembed.evals.grid import evaluate_grid, format_table, heatmaps
from jaxembed.evals.tasks import RetrievalTask, STSTask
