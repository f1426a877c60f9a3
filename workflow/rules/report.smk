# The report a reader opens: reports/index.html (self-contained) and, with `snakemake --report`,
# the same figures with captions from workflow/report/*.rst.


# Code: lmid report: lmid/cli/evaluation.py:_report -> lmid.report.html.build_report
rule report:
    input:
        metrics=f"{REPORTS}/metrics.json",
        summary=f"{REPORTS}/summary.json",
        table=f"{REPORTS}/tables/table.md",
        translations=expand(
            f"{TRANSLATIONS}/{{experiment}}/{{method}}/translations.npz", experiment=EXPERIMENTS, method=METHODS
        ),
        scores=ALL_SCORES,
        logs=expand(f"{MODELS}/{{method}}/train_log.csv", method=METHODS),
        infos=expand(f"{MODELS}/{{method}}/train_info.json", method=METHODS),
        segmenter=f"{MODELS}/kmeans.json",
        splits=expand(f"{SLICES}/{{split}}.npz", split=("train", "val", "test")),
        manifest=f"{SLICES}/manifest.json",
        diagnostics=[f"{REPORTS}/diagnostics.json"] if "lmidiffusion" in METHODS else [],
        unseen=[f"{SLICES_UNSEEN}/test.npz"] if UNSEEN else [],
        baselines=[f"{REPORTS}/baselines.json", f"{DATA}/baselines/samples.npz"] if BASELINE_CHECKED else [],
    output:
        html=f"{REPORTS}/index.html",
        # Every figure the command writes (lmid/report/captions.py: figure_files), with its caption
        # and section.
        **{
            name: report([f"{REPORTS}/{f}" for f in files], caption=f"../report/{name}.rst", category=FIGURE_CATEGORIES[name])
            for name, files in figure_files(EXPERIMENTS).items()
        },
    params:
        cfg=PARAMS_FILE,
        reports=lambda w, input: os.path.dirname(input.metrics),
        metrics=lambda w, input: os.path.dirname(os.path.dirname(input.scores[0])),
        models=lambda w, input: os.path.dirname(input.segmenter),
        slices=lambda w, input: os.path.dirname(input.manifest),
        translations=lambda w, input: os.path.dirname(os.path.dirname(os.path.dirname(input.translations[0]))),
        # Option and value as two words, each quoted by the shell command's {...:q}; none when absent.
        unseen=lambda w, input: ["--unseen-slices-dir", os.path.dirname(input.unseen[0])] if input.unseen else [],
        baselines=lambda w, input: ["--baseline-images", input.baselines[1]] if input.baselines else [],
        # The page shows every parameter, so any change of params.yaml rebuilds it.
        reads=values(*PARAMS_TREE),
    log:
        f"{DATA}/logs/report.log",
    benchmark:
        f"{DATA}/benchmarks/report.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    conda:
        ENV
    shell:
        "lmid report --params {params.cfg:q} --reports-dir {params.reports:q} --models-dir {params.models:q}"
        " --metrics-dir {params.metrics:q} --translations-dir {params.translations:q} --slices-dir {params.slices:q}"
        " {params.unseen:q} {params.baselines:q} --out {output.html:q} > {log:q} 2>&1"
