"""Gradient estimators: one module each, all implementing :class:`labpgt.contracts.Estimator`.

They are built from their names by the experiment registry (labpgt/experiment/registry.py),
which also holds their options and tuned defaults per model.
"""
from labpgt.estimators.backprop import Backprop
from labpgt.estimators.deep import DeepNodePerturbation, DeepParameterPerturbation
from labpgt.estimators.node import NodePerturbation
from labpgt.estimators.node_token import TokenNodePerturbation
from labpgt.estimators.oracle import Oracle
from labpgt.estimators.pgt import ParameterPerturbation
from labpgt.estimators.phyll import PhysicalLocalLearning
from labpgt.estimators.spsa import SPSA
from labpgt.estimators.token_twin import TokenTwin
from labpgt.estimators.twin import DigitalTwin

__all__ = ["Backprop", "DeepNodePerturbation", "DeepParameterPerturbation", "DigitalTwin", "NodePerturbation",
           "Oracle", "ParameterPerturbation", "PhysicalLocalLearning", "SPSA", "TokenNodePerturbation",
           "TokenTwin"]
