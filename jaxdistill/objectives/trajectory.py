"""Trajectory matching under its short name: ``jaxdistill.objectives.trajectory.loss`` is
:func:`jaxdistill.objectives.trajectory_matching.loss` (MTT Eq. 2 with any student step and expert parameters).

The implementation, the TESLA gradient and the registered MTT / TESLA objectives live in
:mod:`jaxdistill.objectives.trajectory_matching`.
"""
from jaxdistill.objectives.trajectory_matching import (DISTANCES, GRADIENTS, TrajectoryMatchingConfig, loss,
                                                      make_trajectory_matching, trajectory_distance)

__all__ = ["DISTANCES", "GRADIENTS", "TrajectoryMatchingConfig", "loss", "make_trajectory_matching",
           "trajectory_distance"]
