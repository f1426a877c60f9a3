# Training: one job per method, on only what that method may see (lmid/methods/base.py).
# Re-running a killed job resumes from data/models/<method>/checkpoint.pt.


if PUBLISHED:

    # Code: lmid use-published: lmid/cli/methods.py:_use_published -> lmid.published.use_published
    rule train:
        """Published weights instead of training (params paths.published): checked, then copied."""
        input:
            train=f"{SLICES}/train.npz",
            published=f"{PUBLISHED}/manifest.json",
        output:
            model=f"{MODELS}/{{method}}/model.pt",
            info=f"{MODELS}/{{method}}/train_info.json",
            log_csv=f"{MODELS}/{{method}}/train_log.csv",
        params:
            cfg=PARAMS_FILE,
            folder=PUBLISHED,
            reads=get_train_keys,
            out=lambda w, output: os.path.dirname(output.model),
        log:
            f"{DATA}/logs/train/{{method}}.log",
        benchmark:
            f"{DATA}/benchmarks/train/{{method}}.tsv"
        resources:
            mem_mb=2000,
            runtime=10,
        threads: 1
        conda:
            ENV
        shell:
            "lmid use-published --params {params.cfg:q} --published {params.folder:q} --method {wildcards.method:q}"
            " --train {input.train:q} --out {params.out:q} > {log:q} 2>&1"


else:

    # Code: lmid train: lmid/cli/methods.py:_train -> lmid.methods.runner.train_method
    rule train:
        input:
            train=f"{SLICES}/train.npz",
            val=f"{SLICES}/val.npz",
        output:
            model=f"{MODELS}/{{method}}/model.pt",
            info=f"{MODELS}/{{method}}/train_info.json",
            log_csv=f"{MODELS}/{{method}}/train_log.csv",
        params:
            cfg=PARAMS_FILE,
            reads=get_train_keys,
            out=lambda w, output: os.path.dirname(output.model),
        log:
            f"{DATA}/logs/train/{{method}}.log",
        benchmark:
            f"{DATA}/benchmarks/train/{{method}}.tsv"
        resources:
            mem_mb=16000,
            runtime=600,
            gpu=get_gpus,
        threads: 1
        priority: get_train_priority
        retries: 1
        conda:
            ENV
        shell:
            "lmid train --params {params.cfg:q} --method {wildcards.method:q} --train {input.train:q}"
            " --val {input.val:q} --out {params.out:q} > {log:q} 2>&1"


# Code: lmid fit-segmenter: lmid/cli/evaluation.py:_fit_segmenter -> lmid.evaluation.segment.fit_segmenter_cmd
rule fit_segmenter:
    input:
        train=f"{SLICES}/train.npz",
    output:
        f"{MODELS}/kmeans.json",
    params:
        cfg=PARAMS_FILE,
        reads=values("seed", "segment"),
    log:
        f"{DATA}/logs/fit_segmenter.log",
    benchmark:
        f"{DATA}/benchmarks/fit_segmenter.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    conda:
        ENV
    shell:
        "lmid fit-segmenter --params {params.cfg:q} --train {input.train:q} --out {output:q} > {log:q} 2>&1"
