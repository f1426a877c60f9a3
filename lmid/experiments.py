"""Experiment names: which modality is translated into the target, on which protocol.

``pd2t1`` is the main experiment (``data.source_modality`` → ``data.target_modality``), ``t22t1``
a zero-shot extra source (``data.extra_modalities``) and ``pd2t1_3t`` the same test subjects
simulated on the unseen protocol (params section ``unseen_protocol``). The workflow's rules and
``lmid aggregate`` both name experiments with these functions.
"""

from __future__ import annotations


def experiment_name(source: str, target: str) -> str:
    return f"{source.lower()}2{target.lower()}"


def experiment_modalities(params) -> dict[str, tuple[str, str]]:
    """Experiment folder name → (source, target) for the main and the extra sources."""
    tgt = params.data.target_modality
    out = {experiment_name(params.data.source_modality, tgt): (params.data.source_modality, tgt)}
    for m in params.data.extra_modalities:  # distinct, never the source or target (DataParams)
        out[experiment_name(m, tgt)] = (m, tgt)
    if params.unseen_protocol_active:
        for name, pair in list(out.items()):
            if pair[0] in params.unseen_sources:
                out[unseen_experiment(name, params)] = pair
    return out


def unseen_experiment(experiment: str, params) -> str:
    """The unseen-protocol twin of an experiment, e.g. pd2t1 → pd2t1_3t."""
    return f"{experiment}_{params.unseen_protocol.name}"


def is_unseen_experiment(experiment: str, params) -> bool:
    return params.unseen_protocol_active and experiment.endswith(f"_{params.unseen_protocol.name}")
