# The report a reader opens: reports/index.html (self-contained) and, with `snakemake --report`,
# the same figures with captions from workflow/report/*.rst.


rule report:
    input:
        metrics="reports/metrics.json",
        table="reports/tables/table.md",
        translations=expand(
            f"{TRANSLATIONS}/{{experiment}}/{{method}}/translations.npz", experiment=EXPERIMENTS, method=METHODS
        ),
        logs=expand(f"{MODELS}/{{method}}/train_log.csv", method=METHODS),
        manifest=f"{SLICES}/manifest.json",
    output:
        html="reports/index.html",
        figures=directory("reports/figures"),
    params:
        cfg=PARAMS_FILE,
        reports=lambda w, input: os.path.dirname(input.metrics),
        metrics=METRICS,
        models=lambda w, input: os.path.dirname(os.path.dirname(input.logs[0])),
        slices=lambda w, input: os.path.dirname(input.manifest),
        translations=lambda w, input: os.path.dirname(os.path.dirname(os.path.dirname(input.translations[0]))),
        report=P.report.model_dump(mode="json"),
    log:
        "data/logs/report.log",
    benchmark:
        "data/benchmarks/report.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    conda:
        ENV
    shell:
        "lmid report --params {params.cfg} --reports-dir {params.reports} --models-dir {params.models} --metrics-dir {params.metrics}"
        " --translations-dir {params.translations} --slices-dir {params.slices} --out {output.html} > {log} 2>&1"
