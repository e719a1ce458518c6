"""The final models of a `cost: latency` study, timed again together on one machine.

Each run timed its own model against its dense twin on the node it trained on, while other
trials shared the machine. Once the study is over, the driver downloads every final run's
logged model (the files `oneprune.saving` wrote, logged with it) and times them all in one
interleaved session with the dense reference's model (`oneprune.cost.time_interleaved`):
every round runs each model once, so one machine, one load and one set of rounds stand
behind every ratio the verdict reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from oneprune.cost import LatencySettings, deployed, speedup, spread, time_interleaved
from oneprune.saving import load_pruned
from search.plan.outcomes import RETIMED, RETIMED_SPREAD, FamilyOutcome
from search.plan.trials import DENSE
from search.tracking.downloads import saved_folder
from search.tracking.registry import logged_model_id


def retime_finals(tracking_uri: str, outcomes: Sequence[FamilyOutcome],
                  final_run: Callable[[str, int], str], settings: LatencySettings) -> None:
    """Add `RETIMED` (dense / model, paired by round) and `RETIMED_SPREAD` to each pruned
    family's `final_costs`, from one interleaved timing of every final run's logged model
    and the dense reference's (its first seed's; a dense model's latency does not depend on
    its weights). Runs without a logged model are left out."""
    dense = next((o for o in outcomes if o.family == DENSE and o.seeds), None)
    if dense is None:
        return
    models, where = {}, {}
    for outcome in [*[o for o in outcomes if o.final_costs], dense]:
        for index, seed in enumerate(outcome.seeds):
            model_id = logged_model_id(tracking_uri, final_run(outcome.family, seed))
            if model_id is None:
                continue
            with saved_folder(f"models:/{model_id}", tracking_uri) as folder:
                pruned = load_pruned(folder)
            data, train = pruned.config["data"], pruned.config["train"]
            label = f"{outcome.family} seed {seed}"
            models[label] = deployed(pruned.model, granularity=train["granularity"],
                                     mean=data["mean"], std=data["std"],
                                     image_size=data["image_size"])
            where[label] = (outcome, index)
            if outcome is dense:
                break  # one dense model is the reference
    reference = f"{DENSE} seed {dense.seeds[0]}"
    if reference not in models or len(models) < 2:
        return
    seconds = time_interleaved(models, settings)
    for label, (outcome, index) in where.items():
        if outcome is not dense and index < len(outcome.final_costs):
            outcome.final_costs[index].update({
                RETIMED: speedup(seconds[reference], seconds[label]),
                RETIMED_SPREAD: spread(seconds[label])})
