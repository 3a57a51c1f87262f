"""Objectives: contrastive losses and the Matryoshka wrappers around them."""

from jaxembed.losses.contrastive import (candidates, info_nce, info_nce_from_logits,
                                         l2_normalize, sigmoid_loss)
from jaxembed.losses.matryoshka import Cell, build_cells, matryoshka_loss
