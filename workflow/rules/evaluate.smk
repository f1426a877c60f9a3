# Evaluation: segment every translation with the target-only K-Means, score per slice, aggregate.


# Code: lmid evaluate: lmid/cli/evaluation.py:_evaluate -> lmid.evaluation.metrics.evaluate_translations
rule evaluate:
    input:
        translations=f"{TRANSLATIONS}/{{experiment}}/{{method}}/translations.npz",
        slices=get_test_slices,
        segmenter=f"{MODELS}/kmeans.json",
    output:
        f"{METRICS}/{{experiment}}/{{method}}.csv",
    params:
        cfg=PARAMS_FILE,
        reads=values("data", "segment"),
    log:
        f"{DATA}/logs/evaluate/{{experiment}}/{{method}}.log",
    benchmark:
        f"{DATA}/benchmarks/evaluate/{{experiment}}/{{method}}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    conda:
        ENV
    shell:
        "lmid evaluate --params {params.cfg:q} --method {wildcards.method:q} --translations {input.translations:q}"
        " --slices {input.slices:q} --segmenter {input.segmenter:q} --out {output:q} > {log:q} 2>&1"


# Code: lmid aggregate: lmid/cli/evaluation.py:_aggregate -> lmid.evaluation.aggregate.aggregate
rule aggregate:
    input:
        metrics=ALL_SCORES,
        sampler=expand(f"{METRICS}/sampler/{{setting}}.csv", setting=P.evaluate.sampler_settings)
        if "lmidiffusion" in METHODS
        else [],
        infos=expand(f"{MODELS}/{{method}}/train_info.json", method=METHODS),
        manifest=f"{SLICES}/manifest.json",
    output:
        # Every file the command writes (lmid/evaluation/aggregate.py: aggregate_outputs).
        metrics=f"{REPORTS}/metrics.json",
        summary=f"{REPORTS}/summary.json",
        table=f"{REPORTS}/tables/table.md",
        tables=[f"{REPORTS}/{f}" for f in aggregate_outputs(P) if f.startswith("tables/") and f != "tables/table.md"],
    params:
        cfg=PARAMS_FILE,
        out=lambda w, output: os.path.dirname(output.metrics),
        reads=values("seed", "data", "evaluate", "cyclegan.source_fraction"),
    log:
        f"{DATA}/logs/aggregate.log",
    benchmark:
        f"{DATA}/benchmarks/aggregate.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    conda:
        ENV
    shell:
        "lmid aggregate --params {params.cfg:q} --scores {input.metrics:q} --sampler {input.sampler:q}"
        " --infos {input.infos:q} --manifest {input.manifest:q} --out-dir {params.out:q} > {log:q} 2>&1"


# Code: lmid diagnose: lmid/cli/evaluation.py:_diagnose -> lmid.evaluation.diagnostics.diagnose
rule diagnose:
    """LMIDiffusion on validation slices: conditioning ablation, oracle, convergence over snapshots.

    The snapshots (MODEL_DIR/snapshots/step*.pt) are written by the same training job as model.pt,
    before it; the command reads every one it finds there.
    """
    input:
        model=f"{MODELS}/lmidiffusion/model.pt",
        val=f"{SLICES}/val.npz",
        segmenter=f"{MODELS}/kmeans.json",
        # The unseen protocol's sources join the conditioning-shift measurement.
        unseen=[f"{SLICES_UNSEEN}/val.npz"] if UNSEEN else [],
    output:
        f"{REPORTS}/diagnostics.json",
    params:
        cfg=PARAMS_FILE,
        slices=P.evaluate.diagnostic_slices,
        # Option and value as two words, each quoted by {...:q}; none without the unseen protocol.
        unseen=lambda w, input: ["--unseen-val", input.unseen[0]] if input.unseen else [],
        # Published models have no snapshots: their convergence curve comes with them.
        published=["--published", PUBLISHED] if PUBLISHED else [],
        reads=values("seed", "data", "diffusion", "lmi", "lmidiffusion", "evaluate.diagnostic_slices",
                     "evaluate.bootstrap", "evaluate.confidence", "unseen_protocol",
                     exclude=SPECS["lmidiffusion"].bookkeeping_keys),
    log:
        f"{DATA}/logs/diagnose.log",
    benchmark:
        f"{DATA}/benchmarks/diagnose.tsv"
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=get_gpus,
    threads: 1
    conda:
        ENV
    shell:
        "lmid diagnose --params {params.cfg:q} --model {input.model:q} --val {input.val:q}"
        " --segmenter {input.segmenter:q} --slices {params.slices:q} {params.unseen:q} {params.published:q}"
        " --out {output:q} > {log:q} 2>&1"


# Code: lmid check-baselines: lmid/cli/evaluation.py:_check_baselines -> lmid.evaluation.baselines.check_baselines
rule check_baselines:
    """Sanity evidence for StyleGAN2-ADA, SDEdit and CycleGAN: samples, histograms, both directions,
    and each one's quality at its training snapshots (validation Dice against training CPU time),
    as for the SynthSeg-style segmenter's snapshots."""
    input:
        models=expand(f"{MODELS}/{{method}}/model.pt", method=BASELINE_CHECKED),
        test=f"{SLICES}/test.npz",
        val=f"{SLICES}/val.npz",
        segmenter=f"{MODELS}/kmeans.json",
    output:
        numbers=f"{REPORTS}/baselines.json",
        images=f"{DATA}/baselines/samples.npz",
    params:
        cfg=PARAMS_FILE,
        published=["--published", PUBLISHED] if PUBLISHED else [],
        reads=values("seed", "diffusion.schedule", "diffusion.train.mixed_precision", "evaluate.diagnostic_slices",
                     "evaluate.bootstrap", "evaluate.confidence", "lmi", "sdedit", "cyclegan", "stylegan2",
                     "synthseg"),
    log:
        f"{DATA}/logs/check_baselines.log",
    benchmark:
        f"{DATA}/benchmarks/check_baselines.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=get_gpus,
    threads: 1
    conda:
        ENV
    shell:
        "lmid check-baselines --params {params.cfg:q} --models {input.models:q} --test {input.test:q}"
        " --val {input.val:q} --segmenter {input.segmenter:q} {params.published:q}"
        " --out {output.numbers:q} --images {output.images:q} > {log:q} 2>&1"
