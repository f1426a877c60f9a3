# Data: simulate the default data set (IXI layout), then slices and subject-level splits.


rule generate:
    output:
        f"{RAW}/phantom.json",
    params:
        cfg=PARAMS_FILE,
        out=lambda w, output: os.path.dirname(output[0]),
        reads=values("seed", "simulate"),
    log:
        f"{DATA}/logs/generate.log",
    benchmark:
        f"{DATA}/benchmarks/generate.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    conda:
        ENV
    shell:
        "lmid generate --params {params.cfg} --out {params.out} > {log} 2>&1"


rule prepare:
    input:
        get_raw_input,
    output:
        train=f"{SLICES}/train.npz",
        val=f"{SLICES}/val.npz",
        test=f"{SLICES}/test.npz",
        manifest=f"{SLICES}/manifest.json",
    params:
        cfg=PARAMS_FILE,
        raw=RAW,
        out=lambda w, output: os.path.dirname(output.train),
        reads=values("seed", "data", "prepare"),
    log:
        f"{DATA}/logs/prepare.log",
    benchmark:
        f"{DATA}/benchmarks/prepare.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    threads: 1
    conda:
        ENV
    shell:
        "lmid prepare --params {params.cfg} --raw {params.raw} --out {params.out} > {log} 2>&1"


rule generate_unseen:
    """The same simulated subjects on the unseen protocol (params section unseen_protocol)."""
    output:
        f"{RAW_UNSEEN}/phantom.json",
    params:
        cfg=PARAMS_FILE,
        out=lambda w, output: os.path.dirname(output[0]),
        # Which sources are translated does not change the volumes: not a rerun trigger.
        reads=values("seed", "simulate", "unseen_protocol", exclude=("unseen_protocol.sources",)),
    log:
        f"{DATA}/logs/generate_unseen.log",
    benchmark:
        f"{DATA}/benchmarks/generate_unseen.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    conda:
        ENV
    shell:
        "lmid generate --params {params.cfg} --protocol unseen --out {params.out} > {log} 2>&1"


rule prepare_unseen:
    """Slices of the unseen protocol, split by subject exactly as the main protocol's."""
    input:
        f"{RAW_UNSEEN}/phantom.json",
    output:
        train=f"{SLICES_UNSEEN}/train.npz",
        val=f"{SLICES_UNSEEN}/val.npz",
        test=f"{SLICES_UNSEEN}/test.npz",
        manifest=f"{SLICES_UNSEEN}/manifest.json",
    params:
        cfg=PARAMS_FILE,
        raw=lambda w, input: os.path.dirname(input[0]),
        out=lambda w, output: os.path.dirname(output.train),
        reads=values("seed", "data", "prepare"),
    log:
        f"{DATA}/logs/prepare_unseen.log",
    benchmark:
        f"{DATA}/benchmarks/prepare_unseen.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    threads: 1
    conda:
        ENV
    shell:
        "lmid prepare --params {params.cfg} --raw {params.raw} --out {params.out} > {log} 2>&1"
