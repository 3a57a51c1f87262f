"""Objectives: contrastive losses and the Matryoshka wrappers around them."""

from jaxembed.losses.contrastive import (candidates, info_nce, info_nce_from_logits,
                                         l2_normalize, multi_positive_pairs, sigmoid_loss)
from jaxembed.losses.contrastive import contrastive_loss, mix_hard_negatives
from jaxembed.losses.distillation import (kl_scores, mse_embeddings,
                                          multi_exit_self_distillation)
from jaxembed.losses.matryoshka import (Cell, build_cells, layer_weight, matryoshka_loss,
                                        mrl_classification_loss, two_d_matryoshka_loss)
from jaxembed.losses.scored import angle_loss, angle_objective, cosent_loss
