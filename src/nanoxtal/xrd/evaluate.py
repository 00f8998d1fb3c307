"""Evaluate and apply the XRD classifiers: metrics, the nearest-neighbour floor, predictions."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nanoxtal.files import atomic_write
from nanoxtal.metrics import (
    accuracy,
    accuracy_at_coverage,
    confusion,
    expected_calibration_error,
    macro_f1,
    top_k_accuracy,
)
from nanoxtal.plots import attribution_figure, confusion_figure, reliability_figure
from nanoxtal.xrd.datamodule import (
    UNNAMED_SOURCE,
    RenderCollate,
    StickSet,
    XrdDataModule,
    render_sticks,
)
from nanoxtal.xrd.io import Measured, read_files, to_grid
from nanoxtal.xrd.library import (
    Library,
    build_library,
    library_probabilities,
    nearest_neighbour,
)
from nanoxtal.xrd.module import (
    XrdClassifier,
    embed_patterns,
    load_classifier,
    pipeline_name,
    run_batched,
)
from nanoxtal.xrd.nets import N_CRYSTAL_SYSTEMS
from nanoxtal.xrd.profiles import LOW_INDEX_AXES, Augmentation, Grid, Renderer
from nanoxtal.xrd.references import Matches, References
from nanoxtal.xrd.structures import (
    CRYSTAL_SYSTEMS,
    StructureError,
    parse_cif,
    read_sources,
    symmetrize,
)
from nanoxtal.xrd.training import measured_set, rruff_split

# The leading columns of `nanoxtal xrd predict` output (ARCHITECTURE §3); top-5 columns follow.
PREDICTION_COLUMNS = (
    "source",
    "index",
    "crystal_system",
    "space_group",
    "p_crystal_system",
    "p_space_group",
)


@torch.no_grad()
def probabilities(
    model: XrdClassifier, patterns: np.ndarray | torch.Tensor, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities of crystal systems (N, 7) and space groups (N, 230)."""
    cs, sg = run_batched(model, model.predict_proba, patterns, batch_size)
    return cs.numpy(), sg.numpy()


def search_library(
    library: Library, model: XrdClassifier, patterns: np.ndarray
) -> dict[str, np.ndarray]:
    """``library.match`` of patterns, with ``model``'s embeddings when the library holds its.

    A library whose embeddings are of another model is searched on the patterns alone (with
    a warning): representations of two networks are not comparable.
    """
    if library.embeddings is None:
        return library.match(patterns)
    if library.model_fingerprint != model.fingerprint():
        warnings.warn(
            f"the library's embeddings are of another model ({library.model_fingerprint}, not"
            f" {model.fingerprint()}): searched on the patterns alone",
            stacklevel=2,
        )
        return library.match(patterns)
    return library.match(patterns, embed_patterns(model, patterns))


def uncalibrated_space_group(model: XrdClassifier, patterns: np.ndarray) -> np.ndarray:
    """Space-group probabilities at temperature 1, to show what calibration changed."""
    temperature = model.temperature.clone()
    model.temperature.fill_(1.0)
    try:
        return probabilities(model, patterns)[1]
    finally:
        model.temperature.copy_(temperature)


def scores(
    crystal_system: np.ndarray,
    space_group: np.ndarray,
    p_crystal_system: np.ndarray,
    p_space_group: np.ndarray,
) -> dict[str, float]:
    """Accuracy, top-k accuracy, macro-F1 and calibration error of both tasks."""
    cs_pred = p_crystal_system.argmax(1)
    sg_pred = p_space_group.argmax(1) + 1
    return {
        "crystal_system_accuracy": accuracy(crystal_system, cs_pred),
        "crystal_system_top2_accuracy": top_k_accuracy(crystal_system, p_crystal_system, 2),
        "crystal_system_macro_f1": macro_f1(crystal_system, cs_pred),
        "space_group_accuracy": accuracy(space_group, sg_pred),
        "space_group_top5_accuracy": top_k_accuracy(space_group, p_space_group, 5, offset=1),
        "space_group_macro_f1": macro_f1(space_group, sg_pred),
        "crystal_system_ece": expected_calibration_error(crystal_system, p_crystal_system),
        "space_group_ece": expected_calibration_error(space_group, p_space_group, offset=1),
    }


def coverage_scores(space_group: np.ndarray, p_space_group: np.ndarray) -> dict[str, float]:
    """Space-group accuracy on the most confident shares (``accuracy_at_coverage``)."""
    correct = p_space_group.argmax(1) + 1 == space_group
    return {
        f"space_group_{key}": value
        for key, value in accuracy_at_coverage(correct, p_space_group.max(1)).items()
    }


def abstention_scores(
    threshold: float,
    space_group: np.ndarray,
    confidence: np.ndarray,
    p_space_group: np.ndarray,
    unlike: np.ndarray | None = None,
) -> dict[str, float]:
    """An abstention threshold, the share it answers and how often those answers are right.

    Args:
        threshold: Patterns less confident than this are not answered (``abstention_rule``).
        space_group: True labels 1-230.
        confidence: The probability the threshold applies to (``abstention_rule``: the
            model's own top space-group probability, or the pipeline's final one).
        p_space_group: The probabilities the answer is taken from (the model's, or mixed
            with a library or reference phases).
        unlike: Patterns unlike every reference phase (``References.unlike``), never
            answered; None: none.
    """
    answered = confidence >= threshold
    if unlike is not None:
        answered &= ~unlike
    right = p_space_group.argmax(1) + 1 == space_group
    return {
        "abstain_below": float(threshold),
        "answered_share": float(answered.mean()),
        "answered_space_group_accuracy": float(right[answered].mean()) if answered.any() else 0.0,
    }


def abstention_rule(
    model: XrdClassifier,
    min_confidence: float | None = None,
    library: Library | None = None,
    references: References | None = None,
) -> tuple[float, bool]:
    """The threshold below which a prediction abstains, and the probability it applies to.

    A threshold given (``min_confidence``) applies to the model's own top space-group
    probability, as does the model's own (``XrdClassifier.abstain_below``) when nothing moves
    its answers. With a library, reference phases or both, the threshold chosen on that
    pipeline's out-of-fold answers (``XrdClassifier.pipeline_abstain_below``, when the model
    has one) applies to its final space-group probability.

    Returns:
        The threshold, and True when it applies to the final (moved) probability.
    """
    if min_confidence is not None:
        return float(min_confidence), False
    name = pipeline_name(library is not None, references is not None)
    if name in model.pipeline_abstain_below:
        return model.pipeline_abstain_below[name], True
    return model.abstain_below, False


def reference_scores(
    references: References,
    matches: Matches,
    crystal_system: np.ndarray,
    space_group: np.ndarray,
) -> dict[str, float]:
    """How often the reference phases named for measured patterns have their symmetry.

    Args:
        references: The reference phases.
        matches: ``references.match`` of the measured patterns.
        crystal_system: Their true crystal systems 0-6.
        space_group: Their true space groups 1-230.

    Returns:
        ``rruff_heldout/references/``: ``match_1_space_group_accuracy`` and
        ``match_1_crystal_system_accuracy`` (the first match), ``top3_space_group_accuracy``
        (any of the three), ``similarity_median`` of the first, and the number of phases.
    """
    found = references.space_group[matches.rows]
    prefix = "rruff_heldout/references"
    return {
        f"{prefix}/match_1_space_group_accuracy": accuracy(space_group, found[:, 0]),
        f"{prefix}/match_1_crystal_system_accuracy": accuracy(
            crystal_system, references.crystal_system[matches.rows[:, 0]]
        ),
        f"{prefix}/top3_space_group_accuracy": float(
            (found == np.asarray(space_group)[:, None]).any(1).mean()
        ),
        f"{prefix}/similarity_median": float(np.median(matches.similarity[:, 0])),
        f"{prefix}/phases": len(references),
        f"{prefix}/unlike_share": float(references.unlike(matches).mean()),
    }


def gradient_times_input(
    model: XrdClassifier, patterns: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Attribution of each 2θ point to the predicted space group: ∂logit/∂x · x.

    Returns:
        The attributions (N, points) and the predicted space groups (N,).
    """
    model.eval()
    x = torch.as_tensor(patterns, dtype=torch.float32).requires_grad_(True)
    _, logits = model(x)
    predicted = logits.argmax(1)
    logits.gather(1, predicted[:, None]).sum().backward()
    return (x.grad * x).detach().numpy(), predicted.numpy() + 1


# Protocol (d): thin films as issue 27 §5 describes the owners' measured ones, strongly
# textured along a low-index axis and scanned from 10 to 60° 2θ.
FILM_EFFECTS: dict[str, Any] = {
    "film_probability": 1.0,
    "film_r": (0.1, 0.5),
    "texture_axes": LOW_INDEX_AXES,
    "window_probability": 1.0,
    "window_start": (10.0, 10.0),
    "window_end": (60.0, 60.0),
}

# Protocol (b)'s name for the Materials Project test rows (``source`` of the structure table).
MP_TEST = "mp_test"
MATERIALS_PROJECT = "materials_project"


def render_split(
    data: XrdDataModule,
    name: str,
    augmentation: Augmentation,
    seed: int,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a split (or its ``rows``) once with a fixed seed: patterns and both labels."""
    subset = data.subset(name)
    if rows is not None:
        subset = subset.subset(rows)
    patterns = render_sticks(subset, data.renderer, augmentation, seed)
    return patterns, subset.crystal_system, subset.space_group


def nearest_rendered(
    structures: StickSet, renderer: Renderer, queries: np.ndarray, seed: int, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """The clean-rendered structure most cosine-similar to each query.

    How well the synthetic training set covers measured patterns: a measured pattern whose
    nearest simulated structure has another space group is one the training data holds no
    close analogue of. The structures are rendered without experimental effects, ``chunk``
    at a time, so memory stays bounded whatever their number.

    Returns:
        Per query: the row (into ``structures``) of its nearest structure and the cosine
        similarity.
    """
    collate = RenderCollate(structures, renderer, Augmentation.clean(), seed, fixed=True)
    rows = np.zeros(len(queries), dtype=np.int64)
    best = np.full(len(queries), -np.inf)
    for start in range(0, len(structures), chunk):
        rendered = collate(list(range(start, min(start + chunk, len(structures)))))["pattern"]
        index, similarity = nearest_neighbour(rendered.numpy(), queries)
        closer = similarity > best
        rows[closer] = start + index[closer]
        best[closer] = similarity[closer]
    return rows, best


def evaluate_models(
    models: dict[str, dict[str, Path]],
    structures: Path | str,
    peaks: Path | str,
    measured: Path | str,
    fraction: float,
    seed: int,
    test_size: int | None = 2048,
    strain: float = 0.03,
    figures: Path | str | None = None,
    explained: int = 4,
    single_phase: tuple[list[Path], Path] | None = None,
    references: References | None = None,
) -> dict[str, Any]:
    """All XRD metrics for every model, on fixed splits.

    Protocols: (a) the held-out part of the measured set (``rruff_split`` with ``fraction`` and
    ``seed``), with and without fine-tuning, beside the cosine 1-nearest-neighbour lookup into the
    fine-tune part (the floor); (b) the Materials Project test split (formulas never trained on),
    rendered with experimental effects; (c) the cubic structures of the test split with lattice
    strain up to ``strain``; (d) the whole test split rendered as textured thin films scanned
    over 10-60° 2θ (``FILM_EFFECTS``), with the share each model answers and how often it is
    right where it does (``.../<variant>+unlike``: also holding back films unlike every
    reference phase, as ``predict`` does).

    Args:
        models: Per model name: ``{"synthetic": ckpt, "finetuned": ckpt}``.
        structures: Structure table.
        peaks: Peak table.
        measured: Labelled measured set (``rruff_dev.npz``).
        fraction: Fine-tune share of the measured set.
        seed: The seed of all splits and renders.
        test_size: Test structures evaluated (seeded subset); ``None`` for all.
        strain: Largest lattice strain of protocol (c).
        figures: Folder for the figures (crystal-system confusion matrices, and gradient ×
            input attributions of ``explained`` held-out measured patterns per model).
        explained: Number of held-out patterns explained per model.
        single_phase: Measured single-phase files and their reference CIF folder: the
            fine-tuned models' predictions are checked against the references
            (``check_single_phase``), and written to ``figures`` as CSV.
        references: The reference phases named beside predictions: how often the first
            (and any of the three) has the held-out pattern's space group and crystal system
            (``rruff_heldout/references/...``); with trust curves, every model is also scored
            with them mixed in (``.../<variant>+references``, ``+library+references``).

    Returns:
        Flat metrics: name → value, with the split sizes. ``rruff_heldout/synthetic_lookup/...``
        is the floor's lookup into the clean-rendered training structures instead
        (``nearest_rendered``), with the median similarity of each lookup's nearest pattern
        (``.../similarity_median``). ``rruff_heldout/library/...`` is the
        library searched on the patterns alone; ``.../<variant>+library/...`` the model mixed
        with the library searched with its own embeddings too (``search_library``), whose
        lookup alone is ``.../<variant>+library/library_space_group_accuracy``. Each model
        abstaining below its own threshold (``XrdClassifier.abstain_below``):
        ``.../abstain_below``, ``.../answered_share`` and ``.../answered_space_group_accuracy``
        (with and without the library).
    """
    patterns, cs, sg = measured_set(measured)
    tune, held = rruff_split(len(patterns), fraction, seed)
    metrics: dict[str, Any] = {
        "rruff_seed": seed,
        "rruff_finetune_fraction": fraction,
        "rruff_finetune_size": len(tune),
        "rruff_heldout_size": len(held),
    }
    matrices: dict[str, np.ndarray] = {}
    # The floor: plain cosine 1-nearest neighbour on the unsmoothed patterns.
    index, similarity = nearest_neighbour(patterns[tune], patterns[held])
    nearest = tune[index]
    metrics["rruff_heldout/nearest_neighbour/crystal_system_accuracy"] = accuracy(
        cs[held], cs[nearest]
    )
    metrics["rruff_heldout/nearest_neighbour/space_group_accuracy"] = accuracy(
        sg[held], sg[nearest]
    )
    metrics["rruff_heldout/nearest_neighbour/similarity_median"] = float(np.median(similarity))
    library = build_library(patterns[tune], cs[tune], sg[tune])
    match = library.match(patterns[held])
    metrics["rruff_heldout/library/crystal_system_accuracy"] = accuracy(
        cs[held], match["crystal_system"]
    )
    metrics["rruff_heldout/library/space_group_accuracy"] = accuracy(sg[held], match["space_group"])
    held_unlike = film_unlike = None
    if references is not None:
        # Searched once: the same matches are mixed into every model below.
        held_matches = references.match(patterns[held])
        held_unlike = references.unlike(held_matches)
        metrics.update(reference_scores(references, held_matches, cs[held], sg[held]))

    data = XrdDataModule(str(structures), str(peaks), val_size=test_size, seed=seed)
    data.setup()
    # Protocol (b) per source: the Materials Project rows keep the name ``mp_test`` (and
    # stay comparable when other sources join); every other database source is scored too.
    tested = data.subset("test").sources
    source_tests = {
        MP_TEST if source in (MATERIALS_PROJECT, UNNAMED_SOURCE) else f"test/{source}": (
            render_split(
                data,
                "test",
                data.augmentation(evaluation=True),
                seed,
                np.flatnonzero(tested == source),
            )
        )
        for source in dict.fromkeys(tested.tolist())
    }
    cubic_rows = np.flatnonzero(data.subset("test").crystal_system == 6)
    strained = Augmentation(
        **{**asdict(data.augmentation(evaluation=True)), "lattice_strain": (-strain, strain)}
    )
    cubic = render_split(data, "test", strained, seed + 7, cubic_rows)
    film = render_split(
        data,
        "test",
        Augmentation(**{**asdict(data.augmentation(evaluation=True)), **FILM_EFFECTS}),
        seed + 11,
    )
    # The same lookup into the synthetic training structures: the no-RRUFF analogue of the
    # floor, and how close the training data comes to the measured patterns at all; per
    # source too (issue 3's coverage: does a source hold an analogue of the measured phase?).
    train = data.subset("train")
    lookup = "rruff_heldout/synthetic_lookup"
    best_row = np.zeros(len(held), dtype=np.int64)
    best = np.full(len(held), -np.inf)
    for source in dict.fromkeys(train.sources.tolist()):
        rows = np.flatnonzero(train.sources == source)
        own = train.subset(rows)
        index, similarity = nearest_rendered(own, data.renderer, patterns[held], seed)
        found = train.space_group[rows[index]]
        metrics[f"{lookup}/{source}/space_group_accuracy"] = accuracy(sg[held], found)
        metrics[f"{lookup}/{source}/crystal_system_accuracy"] = accuracy(
            cs[held], train.crystal_system[rows[index]]
        )
        metrics[f"{lookup}/{source}/structures"] = len(rows)
        closer = similarity > best
        best_row[closer], best[closer] = rows[index][closer], similarity[closer]
    metrics[f"{lookup}/crystal_system_accuracy"] = accuracy(
        cs[held], train.crystal_system[best_row]
    )
    metrics[f"{lookup}/space_group_accuracy"] = accuracy(sg[held], train.space_group[best_row])
    metrics[f"{lookup}/similarity_median"] = float(np.median(best))
    metrics[f"{lookup}/structures"] = len(train)
    symmetry = None if single_phase is None else reference_symmetry(single_phase[1])
    for key, (rendered, _, _) in source_tests.items():
        metrics[f"{key}_size"] = len(rendered)
    metrics["strained_cubic_size"] = len(cubic_rows)
    metrics["strained_cubic_max_strain"] = strain
    metrics["film_test_size"] = len(film[0])
    if references is not None:
        film_unlike = references.unlike(references.match(film[0]))
        metrics["film_test/references/unlike_share"] = float(film_unlike.mean())

    for name, checkpoints in models.items():
        for variant, path in checkpoints.items():
            model = load_classifier(path)
            film_cs, film_sg = probabilities(model, film[0])
            own = model.abstain_below
            for key, value in (
                scores(film[1], film[2], film_cs, film_sg)
                | abstention_scores(own, film[2], film_sg.max(1), film_sg)
            ).items():
                metrics[f"film_test/{name}/{variant}/{key}"] = value
            if film_unlike is not None:
                # Answered only where the model is confident and the film is like a phase.
                gated = abstention_scores(own, film[2], film_sg.max(1), film_sg, film_unlike)
                for key, value in gated.items():
                    metrics[f"film_test/{name}/{variant}+unlike/{key}"] = value
            p_cs, p_sg = probabilities(model, patterns[held])
            for key, value in scores(cs[held], sg[held], p_cs, p_sg).items():
                metrics[f"rruff_heldout/{name}/{variant}/{key}"] = value
            # The library searched with this model's representations too (``search_library``).
            searched = library.with_embeddings(
                embed_patterns(model, patterns[tune]), model.fingerprint()
            )
            found = search_library(searched, model, patterns[held])
            metrics[f"rruff_heldout/{name}/{variant}+library/library_space_group_accuracy"] = (
                accuracy(sg[held], found["space_group"])
            )
            mixed = library_probabilities(found, p_cs, p_sg)
            for key, value in scores(cs[held], sg[held], *mixed).items():
                metrics[f"rruff_heldout/{name}/{variant}+library/{key}"] = value
            for key, value in coverage_scores(sg[held], mixed[1]).items():
                metrics[f"rruff_heldout/{name}/{variant}+library/{key}"] = value
            variants = {"": (p_cs, p_sg), "+library": mixed}
            if references is not None and references.trust_space_group is not None:
                # The published pipeline: model, library, then the reference phases (space
                # group only: the crystal system stays the model's or the library's).
                variants["+references"] = (p_cs, references.mix(held_matches, p_sg))
                variants["+library+references"] = (
                    mixed[0],
                    references.mix(held_matches, mixed[1]),
                )
                for suffix in ("+references", "+library+references"):
                    for key, value in scores(cs[held], sg[held], *variants[suffix]).items():
                        metrics[f"rruff_heldout/{name}/{variant}{suffix}/{key}"] = value
            for suffix, (_, p_space_group) in variants.items():
                # As predict decides (``abstention_rule``); with the reference phases, unlike
                # patterns held back.
                gate = held_unlike if "references" in suffix else None
                threshold, on_final = abstention_rule(
                    model,
                    library=library if "library" in suffix else None,
                    references=references if "references" in suffix else None,
                )
                confidence = (p_space_group if on_final else p_sg).max(1)
                answered = abstention_scores(threshold, sg[held], confidence, p_space_group, gate)
                for key, value in answered.items():
                    metrics[f"rruff_heldout/{name}/{variant}{suffix}/{key}"] = value
            raw_sg = uncalibrated_space_group(model, patterns[held])
            prefix = f"rruff_heldout/{name}/{variant}"
            metrics[f"{prefix}/temperature_crystal_system"] = float(model.temperature[0])
            metrics[f"{prefix}/temperature_space_group"] = float(model.temperature[1])
            metrics[f"{prefix}/space_group_ece_uncalibrated"] = expected_calibration_error(
                sg[held], raw_sg, offset=1
            )
            if figures is not None:
                reliability_figure(
                    {
                        "uncalibrated": (raw_sg.max(1), raw_sg.argmax(1) + 1 == sg[held]),
                        "calibrated": (p_sg.max(1), p_sg.argmax(1) + 1 == sg[held]),
                    },
                    f"{name} ({variant}): space group, RRUFF held-out",
                    Path(figures) / f"reliability_{name}_{variant}.png",
                )
            for key, value in coverage_scores(sg[held], p_sg).items():
                metrics[f"rruff_heldout/{name}/{variant}/{key}"] = value
            matrices[f"rruff_heldout_{name}_{variant}_crystal_system"] = confusion(
                cs[held], p_cs.argmax(1), N_CRYSTAL_SYSTEMS
            )
            if figures is not None:
                rows = held[:explained]
                attributions, predicted = gradient_times_input(model, patterns[rows])
                titles = [
                    f"RRUFF row {r}: space group {sg[r]}, predicted {p}"
                    for r, p in zip(rows, predicted, strict=True)
                ]
                attribution_figure(
                    Grid().values().numpy(),
                    patterns[rows],
                    attributions,
                    titles,
                    Path(figures) / f"attribution_{name}_{variant}.png",
                )
            if single_phase is not None and variant == "finetuned":
                # With the library too: its trust is learnt on library-like queries only.
                for suffix, chosen in (("", None), ("+library", searched)):
                    check = check_single_phase(model, single_phase[0], symmetry, chosen)
                    for column in ("space_group_consistent", "crystal_system_consistent"):
                        metrics[f"single_phase/{name}{suffix}/{column}"] = float(
                            check[column].mean()
                        )
                    metrics["single_phase_size"] = len(check)
                    if figures is not None:
                        table = Path(figures) / f"single_phase_{name}{suffix}.csv"
                        with atomic_write(table) as partial:
                            check.to_csv(partial, index=False)
            if variant != "synthetic":
                continue
            for test_name, test in source_tests.items():
                p_cs, p_sg = probabilities(model, test[0])
                for key, value in scores(test[1], test[2], p_cs, p_sg).items():
                    metrics[f"{test_name}/{name}/{key}"] = value
                matrices[f"{test_name.replace('/', '_')}_{name}_crystal_system"] = confusion(
                    test[1], p_cs.argmax(1), N_CRYSTAL_SYSTEMS
                )
            if len(cubic_rows):
                p_cs, _ = probabilities(model, cubic[0])
                metrics[f"strained_cubic/{name}/crystal_system_accuracy"] = accuracy(
                    cubic[1], p_cs.argmax(1)
                )
    if figures is not None:
        write_confusion_figures(matrices, figures)
    return metrics


def write_confusion_figures(matrices: dict[str, np.ndarray], folder: Path | str) -> list[Path]:
    """One crystal-system confusion-matrix figure per entry of ``matrices``, as ``<name>.png``."""
    return [
        confusion_figure(
            matrix, CRYSTAL_SYSTEMS, name.replace("_", " "), Path(folder) / f"{name}.png"
        )
        for name, matrix in matrices.items()
    ]


def reference_symmetry(references: Path | str) -> dict[str, set[tuple[int, int]]]:
    """(space group, crystal system) of every reference CIF, by reduced formula.

    Symmetry is detected from the structures, not taken from file names.
    """
    found: dict[str, set[tuple[int, int]]] = {}
    for source in read_sources([references]):
        if source.error is not None:
            continue
        try:
            labelled = symmetrize(source.id, parse_cif(source.cif))
        except StructureError:
            continue
        found.setdefault(labelled.formula, set()).add(
            (labelled.space_group, labelled.crystal_system)
        )
    return found


def check_single_phase(
    model: XrdClassifier,
    patterns: list[Path],
    symmetry: dict[str, set[tuple[int, int]]],
    library: Library | None = None,
) -> pd.DataFrame:
    """Predictions for single-phase measured files named after their formula (``MnO2.xy``).

    A file's polymorph is unknown, so a prediction counts as consistent when its space group
    (crystal system) is one of the reference polymorphs' of that formula (``symmetry``, from
    ``reference_symmetry``). With ``library``, the model's answer is mixed with the library's.
    """
    from pymatgen.core import Composition

    table, _ = predict_files(model, patterns, library=library)
    rows = []
    for row in table.itertuples(index=False):
        stem = Path(row.source).stem
        if "+" in stem:
            continue  # a mixture: no single reference
        formula = Composition(stem).reduced_formula
        candidates = symmetry.get(formula, set())
        rows.append(
            {
                "source": row.source,
                "formula": formula,
                "reference_space_groups": " ".join(str(g) for g, _ in sorted(candidates)),
                "predicted_space_group": row.space_group,
                "predicted_crystal_system": row.crystal_system,
                "space_group_consistent": any(row.space_group == g for g, _ in candidates),
                "crystal_system_consistent": any(
                    row.crystal_system == CRYSTAL_SYSTEMS[c] for _, c in candidates
                ),
            }
        )
    return pd.DataFrame(rows)


def predict_files(
    model: XrdClassifier,
    inputs: list[Path],
    assumed_wavelength: float | None = None,
    min_confidence: float | None = None,
    library: Library | None = None,
    references: References | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Predict every pattern of every input file; unreadable files are reported, not fatal.

    Args:
        model: The classifier.
        inputs: Pattern files (any format ``read_patterns`` knows).
        assumed_wavelength: Wavelength (Å) of files that do not state theirs.
        min_confidence: Below this space-group probability (the model's own, before a library
            or references move it) the prediction is marked abstained; None for the model's
            own threshold, or with a library or references that pipeline's threshold on the
            final probability (``abstention_rule``).
        library: Labelled measured patterns searched beside the model
            (``nanoxtal.xrd.library``): a close match shifts the probabilities to its labels.
        references: Reference phases named beside each prediction.

    Returns:
        The predictions (``predict_patterns``; an empty table when no file could be read) and
        the error messages of the files that could not be read.
    """
    patterns, errors = read_files(inputs)
    table = predict_patterns(
        model, patterns, assumed_wavelength, min_confidence, library, references
    )
    return table, [str(error) for error in errors]


def predict_patterns(
    model: XrdClassifier,
    patterns: Sequence[Measured],
    assumed_wavelength: float | None = None,
    min_confidence: float | None = None,
    library: Library | None = None,
    references: References | None = None,
) -> pd.DataFrame:
    """Crystal system and space group of measured patterns, moved onto the model grid first.

    Args:
        model: The classifier.
        patterns: The patterns (``to_grid`` resamples and scales each).
        assumed_wavelength: Wavelength (Å) of patterns that do not state theirs (default: the
            model's, Cu Kα).
        min_confidence: Below this space-group probability (the model's own, before a library
            or references move it) the prediction is marked abstained; None for the model's
            own threshold, or with a library or references that pipeline's threshold on the
            final probability (``abstention_rule``).
        library: Labelled measured patterns searched beside the model
            (``nanoxtal.xrd.library``): a close match shifts the probabilities to its labels.
        references: Reference phases named beside each prediction
            (``nanoxtal.xrd.references``); with trust curves, a close match 1 also moves the
            probabilities towards its classes (``References.mix``), and a pattern unlike every
            phase (``References.unlike``) is marked abstained whatever its probability.

    Returns:
        One row per pattern (``source, index, crystal_system, space_group, p_crystal_system,
        p_space_group``, top-5 space groups with probabilities, coverage, abstained; with a
        library also its nearest pattern's space group and cosine similarity; with references
        ``unlike_references`` and the ``MATCHES`` most similar reference phases,
        ``match_<k>_id, _name, _formula, _space_group, _similarity``); an empty table (no
        columns) when there are no patterns.
    """
    rows, grids = [], []
    for pattern in patterns:
        grid, coverage = to_grid(pattern, assumed_wavelength=assumed_wavelength)
        grids.append(grid)
        rows.append({"source": pattern.source, "index": pattern.index, "coverage": coverage})
    if not rows:
        return pd.DataFrame()
    grids = np.stack(grids)
    p_cs, p_sg = probabilities(model, grids)
    model_confidence = p_sg.max(1)
    if library is not None:
        match = search_library(library, model, grids)
        p_cs, p_sg = library_probabilities(match, p_cs, p_sg)
        for i, row in enumerate(rows):
            row["library_space_group"] = int(match["space_group"][i])
            row["library_similarity"] = float(match["similarity"][i])
    matches = None if references is None else references.match(grids)
    unlike = np.zeros(len(rows), dtype=bool)
    if matches is not None:
        p_sg = references.mix(matches, p_sg)
        unlike = references.unlike(matches)
    top = np.argsort(-p_sg, axis=1)[:, :5]
    threshold, on_final = abstention_rule(model, min_confidence, library, references)
    confidence = p_sg.max(1) if on_final else model_confidence
    for i, row in enumerate(rows):
        row["crystal_system"] = CRYSTAL_SYSTEMS[int(p_cs[i].argmax())]
        row["space_group"] = int(top[i, 0]) + 1
        row["p_crystal_system"] = float(p_cs[i].max())
        row["p_space_group"] = float(p_sg[i, top[i, 0]])
        for k in range(5):
            row[f"space_group_{k + 1}"] = int(top[i, k]) + 1
            row[f"p_space_group_{k + 1}"] = float(p_sg[i, top[i, k]])
        # The probability the threshold was chosen on decides (``abstention_rule``); a
        # pattern unlike every reference phase is unlike the training data too.
        row["abstained"] = bool(confidence[i] < threshold or unlike[i])
    table = pd.DataFrame(rows)
    if matches is not None:
        table = pd.concat(
            [table.assign(unlike_references=unlike), references.columns(matches)], axis=1
        )
    leading = list(PREDICTION_COLUMNS)
    return table[leading + [c for c in table.columns if c not in leading]]


def model_specs(specs: Iterable[str]) -> dict[str, dict[str, Path]]:
    """Models to evaluate from ``NAME=SYNTHETIC,FINETUNED`` specifications.

    Returns:
        Per name: ``{"synthetic": checkpoint, "finetuned": checkpoint}`` (``evaluate_models``).
    """
    models = {}
    for spec in specs:
        name, _, paths = spec.partition("=")
        synthetic, _, finetuned = paths.partition(",")
        models[name] = {"synthetic": Path(synthetic), "finetuned": Path(finetuned)}
    return models


def single_phase_set(folder: Path | str) -> tuple[list[Path], Path]:
    """Measured single-phase files of a folder and their reference CIFs.

    Returns:
        The folder's ``<formula>.xy`` files, sorted, and its ``references`` folder of CIFs:
        ``evaluate_models``' ``single_phase``.
    """
    folder = Path(folder)
    return sorted(folder.glob("*.xy")), folder / "references"
