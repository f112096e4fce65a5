"""``GET /experiments``, ``/experiments/{id}`` and ``/experiments/{id}/sampler``."""

from __future__ import annotations

from fastapi import APIRouter

from cache_service.api.deps import Authorized, ExperimentId, SourceDep
from cache_service.api.models import ExperimentSummary, ExperimentView, Problem, SamplerView
from cache_service.api.source import find_experiment
from cache_service.api.views import sampler_of, summary_of

router = APIRouter(prefix="/experiments", tags=["experiments"], dependencies=Authorized,
                   responses={401: {"model": Problem}, 404: {"model": Problem}, 503: {"model": Problem}})


@router.get("", response_model=list[ExperimentSummary])
def list_experiments(source: SourceDep) -> list[ExperimentSummary]:
    """Every experiment attached to any live cache, with its ratio and last mean Dice."""
    return [summary_of(e) for e in source.experiments()]


@router.get("/{experiment_id}", response_model=ExperimentView)
def get_experiment(experiment_id: ExperimentId, source: SourceDep) -> ExperimentView:
    """Everything the registry holds for one experiment, including its sampler history."""
    return find_experiment(source.experiments(), experiment_id)


@router.get("/{experiment_id}/sampler", response_model=SamplerView)
def get_sampler(experiment_id: ExperimentId, source: SourceDep) -> SamplerView:
    """The ratio trainers use next epoch, the last r_FP / r_FN / Dice, and how the ratio got there."""
    exp = find_experiment(source.experiments(), experiment_id)
    return sampler_of(exp, source.sampler_history(experiment_id))
