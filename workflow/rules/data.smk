# Data: simulate the default data set (IXI layout), then slices and subject-level splits, for each
# protocol (PROTOCOLS in common.smk: the main one and, on simulated data, the unseen one).


# Only simulated data is made by a rule: an IXI or BraTS folder (data.root) is the user's own
# input, and no rule may claim it as an output (Snakemake empties a folder it is about to make).
if P.data.source == "simulated":

    # Code: lmid generate: lmid/cli/data.py:_generate -> lmid.data.phantom.generate
    rule generate:
        """The simulated volumes of a protocol: the main one (section simulate) or the same subjects
        on the unseen protocol (section unseen_protocol)."""
        # The whole folder of volumes, with phantom.json (what `prepare` checks) written last.
        output:
            directory(f"{RAW}{{protocol}}"),
        params:
            cfg=PARAMS_FILE,
            protocol=lambda w: PROTOCOLS[w.protocol],
            out=lambda w, output: output[0],
            reads=get_generate_keys,
        log:
            f"{DATA}/logs/generate{{protocol}}.log",
        benchmark:
            f"{DATA}/benchmarks/generate{{protocol}}.tsv"
        resources:
            mem_mb=4000,
            runtime=30,
        threads: 1
        conda:
            ENV
        shell:
            "lmid generate --params {params.cfg:q} --protocol {params.protocol:q} --out {params.out:q} > {log:q} 2>&1"


# Code: lmid prepare: lmid/cli/data.py:_prepare -> lmid.data.prepare.prepare
rule prepare:
    """Slices of a protocol's volumes; the unseen protocol's subjects are split as the main one's."""
    input:
        get_raw_input,
    output:
        train=f"{SLICES}{{protocol}}/train.npz",
        val=f"{SLICES}{{protocol}}/val.npz",
        test=f"{SLICES}{{protocol}}/test.npz",
        manifest=f"{SLICES}{{protocol}}/manifest.json",
    params:
        cfg=PARAMS_FILE,
        raw=lambda w, input: input[0],
        out=lambda w, output: os.path.dirname(output.train),
        reads=values("seed", "data", "prepare"),
    log:
        f"{DATA}/logs/prepare{{protocol}}.log",
    benchmark:
        f"{DATA}/benchmarks/prepare{{protocol}}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    # Subjects in parallel (registration, skull stripping), one process each; fewer if fewer cores.
    threads: 4
    conda:
        ENV
    shell:
        "lmid prepare --params {params.cfg:q} --raw {params.raw:q} --out {params.out:q} --threads {threads:q} > {log:q} 2>&1"
