# Evaluation: segment every translation with the target-only K-Means, score per slice, aggregate.


rule evaluate:
    input:
        translations=f"{TRANSLATIONS}/{{experiment}}/{{method}}/translations.npz",
        slices=f"{SLICES}/test.npz",
        segmenter=f"{MODELS}/kmeans.json",
    output:
        f"{METRICS}/{{experiment}}/{{method}}.csv",
    params:
        cfg=PARAMS_FILE,
    log:
        "data/logs/evaluate/{experiment}/{method}.log",
    benchmark:
        "data/benchmarks/evaluate/{experiment}/{method}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    conda:
        ENV
    shell:
        "lmid evaluate --params {params.cfg} --method {wildcards.method} --translations {input.translations}"
        " --slices {input.slices} --segmenter {input.segmenter} --out {output} > {log} 2>&1"


rule aggregate:
    input:
        metrics=ALL_SCORES,
        sampler=expand(f"{METRICS}/sampler/{{setting}}.csv", setting=P.evaluate.sampler_settings)
        if "lmidiffusion" in METHODS
        else [],
        infos=expand(f"{MODELS}/{{method}}/train_info.json", method=METHODS),
        manifest=f"{SLICES}/manifest.json",
    output:
        metrics="reports/metrics.json",
        summary="reports/summary.json",
        table="reports/tables/table.md",
        tables=multiext("reports/tables/table", ".csv", ".tex"),
    params:
        cfg=PARAMS_FILE,
        metrics=lambda w, input: os.path.dirname(os.path.dirname(input.metrics[0])),
        models=lambda w, input: os.path.dirname(os.path.dirname(input.infos[0])),
        slices=lambda w, input: os.path.dirname(input.manifest),
        out=lambda w, output: os.path.dirname(output.metrics),
        evaluate=P.evaluate.model_dump(mode="json"),
    log:
        "data/logs/aggregate.log",
    benchmark:
        "data/benchmarks/aggregate.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    conda:
        ENV
    shell:
        "lmid aggregate --params {params.cfg} --metrics-dir {params.metrics} --models-dir {params.models}"
        " --slices-dir {params.slices} --out-dir {params.out} > {log} 2>&1"
