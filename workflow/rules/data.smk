# Data: simulate the default data set (IXI layout), then slices and subject-level splits.


# Only simulated data is made by a rule: an IXI or BraTS folder (data.root) is the user's own
# input, and no rule may claim it as an output (Snakemake empties a folder it is about to make).
if P.data.source == "simulated":

    # Code: lmid generate: lmid/cli/data.py:_generate -> lmid.data.phantom.generate
    rule generate:
        # The whole folder of volumes, with phantom.json (what `prepare` checks) written last.
        output:
            directory(RAW),
        params:
            cfg=PARAMS_FILE,
            out=lambda w, output: output[0],
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
            "lmid generate --params {params.cfg:q} --out {params.out:q} > {log:q} 2>&1"


# Code: lmid prepare: lmid/cli/data.py:_prepare -> lmid.data.prepare.prepare
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
        raw=lambda w, input: input[0],
        out=lambda w, output: os.path.dirname(output.train),
        reads=values("seed", "data", "prepare"),
    log:
        f"{DATA}/logs/prepare.log",
    benchmark:
        f"{DATA}/benchmarks/prepare.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    # Subjects in parallel (registration, skull stripping), one process each; fewer if fewer cores.
    threads: 4
    conda:
        ENV
    shell:
        "lmid prepare --params {params.cfg:q} --raw {params.raw:q} --out {params.out:q} --threads {threads:q} > {log:q} 2>&1"


# The unseen-protocol twins of the simulated subjects (params section unseen_protocol).
if UNSEEN:

    # Code: lmid generate: lmid/cli/data.py:_generate -> lmid.data.phantom.generate
    rule generate_unseen:
        """The same simulated subjects on the unseen protocol (params section unseen_protocol)."""
        output:
            directory(RAW_UNSEEN),
        params:
            cfg=PARAMS_FILE,
            out=lambda w, output: output[0],
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
            "lmid generate --params {params.cfg:q} --protocol unseen --out {params.out:q} > {log:q} 2>&1"


    # Code: lmid prepare: lmid/cli/data.py:_prepare -> lmid.data.prepare.prepare
    rule prepare_unseen:
        """Slices of the unseen protocol, split by subject exactly as the main protocol's."""
        input:
            RAW_UNSEEN,
        output:
            train=f"{SLICES_UNSEEN}/train.npz",
            val=f"{SLICES_UNSEEN}/val.npz",
            test=f"{SLICES_UNSEEN}/test.npz",
            manifest=f"{SLICES_UNSEEN}/manifest.json",
        params:
            cfg=PARAMS_FILE,
            raw=lambda w, input: input[0],
            out=lambda w, output: os.path.dirname(output.train),
            reads=values("seed", "data", "prepare"),
        log:
            f"{DATA}/logs/prepare_unseen.log",
        benchmark:
            f"{DATA}/benchmarks/prepare_unseen.tsv"
        resources:
            mem_mb=8000,
            runtime=60,
        threads: 4
        conda:
            ENV
        shell:
            "lmid prepare --params {params.cfg:q} --raw {params.raw:q} --out {params.out:q} --threads {threads:q} > {log:q} 2>&1"
