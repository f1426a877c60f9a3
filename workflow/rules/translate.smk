# Translation of the test split, sharded into independent jobs per method, then gathered.


# Code: lmid translate: lmid/cli/methods.py:_translate -> lmid.methods.runner.translate_shard
rule translate:
    input:
        model=get_model,
        slices=get_test_slices,
    output:
        f"{TRANSLATIONS}/{{experiment}}/{{method}}/shard-{{shard}}-of-{{n}}.npz",
    params:
        cfg=PARAMS_FILE,
        source=get_source_modality,
        reads=get_translate_keys,
    log:
        f"{DATA}/logs/translate/{{experiment}}/{{method}}/shard-{{shard}}-of-{{n}}.log",
    benchmark:
        f"{DATA}/benchmarks/translate/{{experiment}}/{{method}}/shard-{{shard}}-of-{{n}}.tsv"
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=get_gpus,
    threads: 1
    retries: 1
    conda:
        ENV
    shell:
        "lmid translate --params {params.cfg:q} --method {wildcards.method:q} --model {input.model:q}"
        " --slices {input.slices:q} --source-modality {params.source:q} --shard {wildcards.shard:q}"
        " --num-shards {wildcards.n:q} --out {output:q} > {log:q} 2>&1"


# Code: lmid gather: lmid/cli/methods.py:_gather -> lmid.methods.runner.gather
rule gather:
    input:
        shards=get_shards,
        slices=get_test_slices,
        manifest=get_manifest,
    output:
        translations=f"{TRANSLATIONS}/{{experiment}}/{{method}}/translations.npz",
        nifti=directory(f"{TRANSLATIONS}/{{experiment}}/{{method}}/nifti"),
    log:
        f"{DATA}/logs/gather/{{experiment}}/{{method}}.log",
    benchmark:
        f"{DATA}/benchmarks/gather/{{experiment}}/{{method}}.tsv"
    resources:
        mem_mb=4000,
        runtime=20,
    threads: 1
    conda:
        ENV
    shell:
        "lmid gather --method {wildcards.method:q} --shards {input.shards:q} --slices {input.slices:q}"
        " --manifest {input.manifest:q} --out {output.translations:q} --nifti-dir {output.nifti:q} > {log:q} 2>&1"


# Code: lmid sampler-sweep: lmid/cli/methods.py:_sampler_sweep -> lmid.methods.runner.sweep_sampler
rule sampler_sweep:
    """LMIDiffusion at one sampler setting on validation slices (the sampler table)."""
    input:
        model=f"{MODELS}/lmidiffusion/model.pt",
        slices=f"{SLICES}/val.npz",
        manifest=f"{SLICES}/manifest.json",
        segmenter=f"{MODELS}/kmeans.json",
    output:
        shard=f"{TRANSLATIONS}/sampler/{{setting}}/shard-0-of-1.npz",
        translations=f"{TRANSLATIONS}/sampler/{{setting}}/translations.npz",
        metrics=f"{METRICS}/sampler/{{setting}}.csv",
    params:
        cfg=PARAMS_FILE,
        # From published models: their scores of this setting, reused once re-sampled slices match.
        published=["--published", PUBLISHED] if PUBLISHED else [],
        reads=values(*SWEEP_KEYS, *(["evaluate.published_sweep_check"] if PUBLISHED else [])),
    log:
        f"{DATA}/logs/sampler/{{setting}}.log",
    benchmark:
        f"{DATA}/benchmarks/sampler/{{setting}}.tsv"
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=get_gpus,
    threads: 1
    conda:
        ENV
    shell:
        "lmid sampler-sweep --params {params.cfg:q} --model {input.model:q} --slices {input.slices:q}"
        " --manifest {input.manifest:q} --segmenter {input.segmenter:q} --sampler {wildcards.setting:q}"
        " --shard-out {output.shard:q} --translations-out {output.translations:q}"
        " --out {output.metrics:q} {params.published:q} > {log:q} 2>&1"
