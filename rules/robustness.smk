# Robustness data (dapt/data/augment.py, dapt/data/textops.py): augmented copies of a task's training rows, one
# file per augment: setting, and perturbed copies of its test split (robustness:), one file per
# perturbation that every run is scored on; WordNet's synonyms for the synonym operation.


include: "robustness_helpers.smk"


localrules:
    prepare_wordnet,


rule prepare_wordnet:
    output:
        synonyms=layout.WORDNET,
    log:
        layout.log_path("prepare_wordnet", "wordnet"),
    benchmark:
        layout.benchmark_path("prepare_wordnet", "wordnet")
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        script=script("augment_data.py"),
        spec=lambda w: as_json(config["wordnet"]),
        cache=layout.CACHE,
        unverified=download_args(),
    shell:
        "python {params.script} wordnet --config-json {params.spec:q} --out {output}"
        " --cache-dir {params.cache}{params.unverified} > {log} 2>&1"


rule augment:
    input:
        task=rules.prepare_task.output.task,
        synonyms=lambda w: synonyms_for(augment_setting(w)["ops"]),
    output:
        augmented=layout.AUGMENTED,
    log:
        layout.log_path("augment", "{task}/{augment}"),
    benchmark:
        layout.benchmark_path("augment", "{task}/{augment}")
    wildcard_constraints:
        augment=r"[a-z_]+-n\d+-r[0-9.e-]+-s\d+",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        script=script("augment_data.py"),
        settings=lambda w: as_json(augment_setting(w)),
        synonyms=synonyms_flag,
    shell:
        "python {params.script} augment --task-dir {input.task} --settings {params.settings:q}"
        "{params.synonyms} --out {output} > {log} 2>&1"


rule perturb:
    input:
        task=rules.prepare_task.output.task,
        synonyms=lambda w: synonyms_for([w.perturbation]),
    output:
        perturbed=layout.PERTURBED,
    log:
        layout.log_path("perturb", "{task}/{perturbation}"),
    benchmark:
        layout.benchmark_path("perturb", "{task}/{perturbation}")
    wildcard_constraints:
        perturbation=r"[a-z]+",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        script=script("augment_data.py"),
        rate=lambda w: ROBUSTNESS["perturbations"][w.perturbation],
        seed=lambda w: ROBUSTNESS["seed"],
        sample=lambda w: (
            f" --max-examples {ROBUSTNESS['max_examples']}"
            if ROBUSTNESS["max_examples"]
            else ""
        ),
        synonyms=synonyms_flag,
    shell:
        "python {params.script} perturb --task-dir {input.task} --op {wildcards.perturbation}"
        " --rate {params.rate} --seed {params.seed}{params.sample}{params.synonyms}"
        " --out {output} > {log} 2>&1"
